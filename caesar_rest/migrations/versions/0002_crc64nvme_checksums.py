"""CRC64NVME checksums of files and job inputs (beside sha256)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: files stored before this revision keep only their sha256 (still verified).
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('crc64nvme', sa.String(length=16), nullable=True))
    with op.batch_alter_table('job_inputs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('crc64nvme', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job_inputs', schema=None) as batch_op:
        batch_op.drop_column('crc64nvme')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_column('crc64nvme')
