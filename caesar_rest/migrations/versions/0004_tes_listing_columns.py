"""TES listing columns: jobs.tes_name and the tes_tags table

ListTasks filtered name_prefix and tag_key/tag_value in Python, after loading every candidate's whole task
document (job.extra, up to TES_MAX_TASK_BYTES each) in every view. The name and the tags now live beside the
document, so the filters are SQL (a substring comparison and an EXISTS) and a MINIMAL listing reads only ids
and states. Existing TES jobs are filled in from their documents.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('tes_name', sa.Text(), nullable=True))
    tags = op.create_table(
        'tes_tags',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('job_id', sa.String(length=36), nullable=False),
        sa.Column('key', sa.Text(), nullable=False),
        sa.Column('value', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_tes_tags_job_id', 'tes_tags', ['job_id'])
    bind = op.get_bind()
    jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('kind', sa.String), sa.column('extra', sa.JSON),
                    sa.column('tes_name', sa.Text))
    rows = bind.execute(sa.select(jobs.c.id, jobs.c.extra).where(jobs.c.kind == 'tes')).all()
    for job_id, extra in rows:
        doc = (extra or {}).get('tes') or {}
        name = doc.get('name')
        if isinstance(name, str):
            bind.execute(jobs.update().where(jobs.c.id == job_id).values(tes_name=name))
        found = [{'job_id': job_id, 'key': k, 'value': v} for k, v in (doc.get('tags') or {}).items()
                 if isinstance(k, str) and isinstance(v, str)]
        if found:
            bind.execute(tags.insert(), found)


def downgrade() -> None:
    op.drop_index('ix_tes_tags_job_id', table_name='tes_tags')
    op.drop_table('tes_tags')
    with op.batch_alter_table('jobs') as batch:      # SQLite before 3.35 cannot drop a column in place
        batch.drop_column('tes_name')
