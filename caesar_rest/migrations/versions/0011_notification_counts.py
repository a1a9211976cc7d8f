"""Notification counts kept by the database: notify_counts and the triggers on notify_deliveries that maintain it

/metrics counted the outbox by state with a GROUP BY over every delivery ever made (they are kept once delivered),
on every scrape. As for the jobs (migration 0009, where the why is): on PostgreSQL, statement triggers append one
delta row per state for INSERT and DELETE, a row trigger two for an UPDATE that changes the state; the same fold
(caesar_rest.metrics.compact_job_counts) makes them one row per state. On SQLite, row triggers upsert in place.
Existing deliveries are counted once.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 14:50:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def _postgresql() -> list[str]:
    return [
        """CREATE FUNCTION notify_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO notify_counts (state, n) SELECT state, count(*) FROM new_rows GROUP BY state;
            RETURN NULL; END $$""",
        """CREATE FUNCTION notify_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO notify_counts (state, n) SELECT state, -count(*) FROM old_rows GROUP BY state;
            RETURN NULL; END $$""",
        """CREATE FUNCTION notify_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO notify_counts (state, n) VALUES (OLD.state, -1), (NEW.state, 1); RETURN NULL; END $$""",
        """CREATE FUNCTION notify_counts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN DELETE FROM notify_counts; RETURN NULL; END $$""",
        ("CREATE TRIGGER notify_counts_insert AFTER INSERT ON notify_deliveries REFERENCING NEW TABLE AS new_rows "
         "FOR EACH STATEMENT EXECUTE FUNCTION notify_counts_inserted()"),
        ("CREATE TRIGGER notify_counts_delete AFTER DELETE ON notify_deliveries REFERENCING OLD TABLE AS old_rows "
         "FOR EACH STATEMENT EXECUTE FUNCTION notify_counts_deleted()"),
        ("CREATE TRIGGER notify_counts_update AFTER UPDATE OF state ON notify_deliveries FOR EACH ROW "
         "WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION notify_counts_updated()"),
        ("CREATE TRIGGER notify_counts_truncate AFTER TRUNCATE ON notify_deliveries FOR EACH STATEMENT "
         "EXECUTE FUNCTION notify_counts_truncated()"),
    ]


def _upsert(row: str, sign: str) -> str:
    return (f"INSERT INTO notify_counts (state, n) VALUES ({row}.state, {sign}1) "
            f"ON CONFLICT (state) DO UPDATE SET n = n + excluded.n;")


def _sqlite() -> list[str]:
    return [
        "CREATE UNIQUE INDEX ux_notify_counts_state ON notify_counts (state)",
        f"CREATE TRIGGER notify_counts_insert AFTER INSERT ON notify_deliveries BEGIN {_upsert('NEW', '')} END",
        f"CREATE TRIGGER notify_counts_delete AFTER DELETE ON notify_deliveries BEGIN {_upsert('OLD', '-')} END",
        ("CREATE TRIGGER notify_counts_update AFTER UPDATE OF state ON notify_deliveries "
         f"WHEN OLD.state IS NOT NEW.state BEGIN {_upsert('OLD', '-')} {_upsert('NEW', '')} END"),
    ]


def upgrade() -> None:
    op.create_table(
        'notify_counts',
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
    )
    for statement in _postgresql() if op.get_bind().dialect.name == 'postgresql' else _sqlite():
        op.execute(statement)
    op.execute("INSERT INTO notify_counts (state, n) SELECT state, count(*) FROM notify_deliveries GROUP BY state")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == 'postgresql'
    for name in ('insert', 'delete', 'update', 'truncate'):
        if postgresql:
            op.execute(f"DROP TRIGGER IF EXISTS notify_counts_{name} ON notify_deliveries")
            op.execute(f"DROP FUNCTION IF EXISTS notify_counts_{name.rstrip('e')}ed()")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS notify_counts_{name}")
    op.drop_table('notify_counts')
