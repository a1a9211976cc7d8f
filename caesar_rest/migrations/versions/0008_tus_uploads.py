"""Resumable uploads (tus 1.0): one row per upload in progress

An upload's declared length counts against its owner's quota until it completes (it then is a file of the same
uuid) or expires (the reaper removes it with its part file).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 13:15:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tus_uploads',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('owner', sa.String(length=128), nullable=False),
        sa.Column('filename', sa.String(length=255), nullable=False),
        sa.Column('format', sa.String(length=32), nullable=False),
        sa.Column('tag', sa.String(length=255), nullable=True),
        sa.Column('length', sa.BigInteger(), nullable=False),
        sa.Column('offset', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.Column('completed_at', sa.DateTime(), nullable=True),
    )
    op.create_index('ix_tus_uploads_owner', 'tus_uploads', ['owner'])
    op.create_index('ix_tus_uploads_expires_at', 'tus_uploads', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_tus_uploads_expires_at', table_name='tus_uploads')
    op.drop_index('ix_tus_uploads_owner', table_name='tus_uploads')
    op.drop_table('tus_uploads')
