"""Liveness: jobs.follower (the poll chain that follows a remote job), jobs.republished_at, and the marks table

Two poll chains could follow one remote job (a reaper's re-follow while the first chain was only slow), and the
loser's end could drop what the winner stored. A chain now takes the job with a token in one UPDATE, and keeps it
while its heartbeat is fresh. The reaper republished every old PENDING job on every run; it now records when it
did, and republishes a job at most once per PENDING_REPUBLISH_AFTER. After a gap in its runs (the database was
away) it waits a grace period before it judges any heartbeat stale: marks keeps when it last ran and since when.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 21:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('follower', sa.String(length=32), nullable=True))
    op.add_column('jobs', sa.Column('republished_at', sa.DateTime(), nullable=True))
    op.create_table(
        'marks',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('marks')
    with op.batch_alter_table('jobs') as batch:      # SQLite before 3.35 cannot drop a column in place
        batch.drop_column('republished_at')
        batch.drop_column('follower')
