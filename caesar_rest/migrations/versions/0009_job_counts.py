"""Job counts kept by the database: the job_counts table and the triggers on jobs that maintain it

/metrics counted jobs by (app, backend, state) and built the duration histogram with a GROUP BY over the whole jobs
table on every scrape: about 0.5 s per scrape at a million jobs on PostgreSQL. The database now keeps the counts:
triggers on jobs add each row's contribution (1 to its state's count and, once it is terminal with an elapsed time,
to the histogram's count, sum and buckets) when it is inserted, take it away when it is deleted, and move it when
an UPDATE changes its app, backend, state or elapsed. Every writer is covered (the state machine, a bulk COPY, a
test's UPDATE, a DELETE of a job), in the writer's own transaction: a rolled-back change counts nothing.

PostgreSQL: the triggers append delta rows and never update one in place. A counter row per key updated by every
transition would be a lock held by each submitting or finishing transaction until its commit: submissions of one
app would queue on it, and two transactions moving jobs through states in a different order (PENDING -> STARTED
beside RUNNING -> PENDING beside STARTED -> RUNNING) could deadlock. Appended rows take no row lock. The reader
sums them (a few rows per key and per job since the last compaction); metrics.compact_job_counts() folds them into
one row per key (DELETE ... RETURNING, then INSERT of the sums, one statement: a delta committed meanwhile is
neither seen nor deleted, so none is lost or counted twice, even with two compactions at once). Inserts and deletes
are counted per statement (transition tables: a bulk load adds one row per key, not one per job); an UPDATE, per
row, only when one of the four columns changed (a heartbeat costs a WHEN test, nothing more). TRUNCATE empties it.

SQLite (one writer at a time, so no lock order to fear): row triggers upsert one row per key in place.

The histogram's bucket bounds are the columns le_<seconds>: caesar_rest.models.DURATION_BUCKETS, as of this
revision. Existing jobs are counted once, after the triggers are in place (on PostgreSQL, CREATE TRIGGER's lock
holds writers off until the migration commits).

A later migration that rebuilds jobs on SQLite (op.batch_alter_table('jobs') copies it into a new table) drops
these triggers with the old table: it must create them again (_sqlite() here).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 14:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
TERMINAL = "('SUCCESS', 'FAILURE', 'TIMED-OUT', 'CANCELED', 'ABORTED')"
KEY = ('app', 'backend', 'state')
VALUES = ('n', 'timed', 'elapsed_sum', *(f'le_{b}' for b in BUCKETS))


def _contribution(row: str, sign: str = '') -> list[str]:
    """The value columns' expressions for one job row (`row` is NEW, OLD or a transition table's alias)."""
    timed = f"{row}.state IN {TERMINAL} AND {row}.elapsed IS NOT NULL"
    return [f"{sign}1", f"{sign}(CASE WHEN {timed} THEN 1 ELSE 0 END)",
            f"{sign}(CASE WHEN {timed} THEN {row}.elapsed ELSE 0 END)",
            *(f"{sign}(CASE WHEN {timed} AND {row}.elapsed <= {b} THEN 1 ELSE 0 END)" for b in BUCKETS)]


def _grouped(table: str, sign: str = '') -> str:
    """SELECT key, sums FROM table GROUP BY key: the counts a set of job rows contributes."""
    sums = ", ".join(f"{sign}sum({expr})" for expr in _contribution('r')[1:])
    return (f"SELECT r.app, r.backend, r.state, {sign}count(*), {sums} FROM {table} r "
            f"GROUP BY r.app, r.backend, r.state")


COLUMNS = ", ".join((*KEY, *VALUES))
CHANGED = ("OLD.app IS DISTINCT FROM NEW.app OR OLD.backend IS DISTINCT FROM NEW.backend OR "
           "OLD.state IS DISTINCT FROM NEW.state OR OLD.elapsed IS DISTINCT FROM NEW.elapsed")


def _postgresql() -> list[str]:
    old, new = ", ".join(("OLD.app", "OLD.backend", "OLD.state", *_contribution("OLD", "-"))), \
        ", ".join(("NEW.app", "NEW.backend", "NEW.state", *_contribution("NEW")))
    return [
        f"""CREATE FUNCTION job_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO job_counts ({COLUMNS}) {_grouped('new_rows')}; RETURN NULL; END $$""",
        f"""CREATE FUNCTION job_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO job_counts ({COLUMNS}) {_grouped('old_rows', '-')}; RETURN NULL; END $$""",
        f"""CREATE FUNCTION job_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO job_counts ({COLUMNS}) VALUES ({old}), ({new}); RETURN NULL; END $$""",
        """CREATE FUNCTION job_counts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN DELETE FROM job_counts; RETURN NULL; END $$""",
        ("CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows "
         "FOR EACH STATEMENT EXECUTE FUNCTION job_counts_inserted()"),
        ("CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows "
         "FOR EACH STATEMENT EXECUTE FUNCTION job_counts_deleted()"),
        (f"CREATE TRIGGER job_counts_update AFTER UPDATE OF app, backend, state, elapsed ON jobs FOR EACH ROW "
         f"WHEN ({CHANGED}) EXECUTE FUNCTION job_counts_updated()"),
        ("CREATE TRIGGER job_counts_truncate AFTER TRUNCATE ON jobs FOR EACH STATEMENT "
         "EXECUTE FUNCTION job_counts_truncated()"),
    ]


def _sqlite_upsert(row: str, sign: str) -> str:
    values = ", ".join((f"{row}.app", f"{row}.backend", f"{row}.state", *_contribution(row, sign)))
    update = ", ".join(f"{c} = {c} + excluded.{c}" for c in VALUES)
    return (f"INSERT INTO job_counts ({COLUMNS}) VALUES ({values}) "
            f"ON CONFLICT (app, backend, state) DO UPDATE SET {update};")


def _sqlite() -> list[str]:
    return [
        "CREATE UNIQUE INDEX ux_job_counts_key ON job_counts (app, backend, state)",
        f"CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN {_sqlite_upsert('NEW', '')} END",
        f"CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN {_sqlite_upsert('OLD', '-')} END",
        (f"CREATE TRIGGER job_counts_update AFTER UPDATE OF app, backend, state, elapsed ON jobs "
         f"WHEN {CHANGED.replace('IS DISTINCT FROM', 'IS NOT')} "
         f"BEGIN {_sqlite_upsert('OLD', '-')} {_sqlite_upsert('NEW', '')} END"),
    ]


def upgrade() -> None:
    op.create_table(
        'job_counts',
        sa.Column('app', sa.String(length=128), nullable=False),
        sa.Column('backend', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.Column('timed', sa.BigInteger(), nullable=False),
        sa.Column('elapsed_sum', sa.Float(), nullable=False),
        *(sa.Column(f'le_{b}', sa.BigInteger(), nullable=False) for b in BUCKETS),
    )
    bind = op.get_bind()
    for statement in _postgresql() if bind.dialect.name == 'postgresql' else _sqlite():
        op.execute(statement)
    op.execute(f"INSERT INTO job_counts ({COLUMNS}) {_grouped('jobs')}")


def downgrade() -> None:
    bind = op.get_bind()
    for name in ('insert', 'delete', 'update', 'truncate'):
        if bind.dialect.name == 'postgresql':
            op.execute(f"DROP TRIGGER IF EXISTS job_counts_{name} ON jobs")
            op.execute(f"DROP FUNCTION IF EXISTS job_counts_{name.rstrip('e')}ed()")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS job_counts_{name}")
    op.drop_table('job_counts')
