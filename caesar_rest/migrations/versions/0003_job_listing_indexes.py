"""Job listing indexes: (submit_date, id) and (owner, submit_date, id)

GET /jobs and TES ListTasks order by submit_date DESC, id DESC. With submit_date alone indexed, jobs sharing
a submission time (a batch inserted at once) had to be sorted by id before the first page could be cut: with
10,000 of them at the top, a page took ~10 ms instead of ~0.1 ms. The composite indexes give the order
directly, with and without an owner filter, and replace the single-column owner and submit_date ones (their
leading columns serve the same lookups).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 23:10:00
"""
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_jobs_submit_date_id', 'jobs', ['submit_date', 'id'])
    op.create_index('ix_jobs_owner_submit_date_id', 'jobs', ['owner', 'submit_date', 'id'])
    op.drop_index('ix_jobs_submit_date', table_name='jobs')
    op.drop_index('ix_jobs_owner', table_name='jobs')


def downgrade() -> None:
    op.create_index('ix_jobs_owner', 'jobs', ['owner'])
    op.create_index('ix_jobs_submit_date', 'jobs', ['submit_date'])
    op.drop_index('ix_jobs_owner_submit_date_id', table_name='jobs')
    op.drop_index('ix_jobs_submit_date_id', table_name='jobs')
