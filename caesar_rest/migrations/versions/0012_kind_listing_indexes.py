"""Listing indexes by kind: (kind, submit_date, id) and (owner, kind, submit_date, id)

TES ListTasks lists kind 'tes' and OGC API GET /jobs kind 'app', newest first, all or one owner's. The (submit_date,
id) and (owner, submit_date, id) indexes give the order but not the kind: the first page walked every job of the
other kind newer than the page's last one. Where TES tasks are few among many app jobs that is the whole table:
with 300 TES tasks among 1,002,700 jobs, PostgreSQL's first ListTasks page took 230 ms (a parallel sequential scan
and a sort). These indexes read the page's rows and no other, whatever the mix. Full indexes, not partial ones (WHERE
kind = 'tes'): the listing's kind is a bound parameter, which a prepared statement's generic plan cannot match
against an index predicate.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 15:00:00
"""
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_jobs_kind_submit_date_id', 'jobs', ['kind', 'submit_date', 'id'])
    op.create_index('ix_jobs_owner_kind_submit_date_id', 'jobs', ['owner', 'kind', 'submit_date', 'id'])


def downgrade() -> None:
    op.drop_index('ix_jobs_owner_kind_submit_date_id', table_name='jobs')
    op.drop_index('ix_jobs_kind_submit_date_id', table_name='jobs')
