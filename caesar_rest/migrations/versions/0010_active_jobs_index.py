"""Active jobs index: (state, submit_date, id) over PENDING, STARTED and RUNNING jobs only (a partial index)

The reaper republishes the oldest overdue PENDING jobs first, a bounded batch a run (workers/lost.py). With a million
finished jobs and a backlog of 100,000 an hour old, PostgreSQL answered that from the (submit_date, id) index, from
the oldest job on, filtering out 992,591 finished ones: 372 ms a run. This index holds the active jobs alone (a few
thousand at most, whatever the history), in the order the reaper reads them; a finished job leaves it. The
reaper's queries on STARTED and RUNNING jobs use it too. SQLite gets the same index (its planner uses it where the
query names the index's states).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 14:45:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

ACTIVE = sa.text("state IN ('PENDING', 'STARTED', 'RUNNING')")


def upgrade() -> None:
    op.create_index('ix_jobs_active_state_submit_date_id', 'jobs', ['state', 'submit_date', 'id'],
                    postgresql_where=ACTIVE, sqlite_where=ACTIVE)


def downgrade() -> None:
    op.drop_index('ix_jobs_active_state_submit_date_id', table_name='jobs')
