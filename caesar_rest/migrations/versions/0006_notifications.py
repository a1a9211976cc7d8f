"""Notifications: subscriptions, the delivery outbox, each attempt, and jobs.notify

A job may name URLs to be told of its state changes (caesar-rest `notify`, TES tags, OGC `subscriber`). Each
transition of such a job writes its deliveries in its own transaction (the outbox); the control worker sends them
and records every attempt. jobs.notify says a job has subscriptions, so the transitions of every other job find
that out from their own UPDATE, with no query.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 06:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('notify', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        'notify_subscriptions',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('job_id', sa.String(length=36), nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('format', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_notify_subscriptions_job_id', 'notify_subscriptions', ['job_id'])
    op.create_table(
        'notify_deliveries',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('subscription_id', sa.String(length=32), nullable=False),
        sa.Column('job_id', sa.String(length=36), nullable=False),
        sa.Column('event', sa.String(length=16), nullable=False),
        sa.Column('job_state', sa.String(length=16), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('next_try', sa.DateTime(), nullable=True),
        sa.Column('leased_until', sa.DateTime(), nullable=True),
        sa.Column('done_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['subscription_id'], ['notify_subscriptions.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_notify_deliveries_due', 'notify_deliveries', ['state', 'next_try'])
    op.create_index('ix_notify_deliveries_subscription', 'notify_deliveries', ['subscription_id', 'id'])
    op.create_index('ix_notify_deliveries_job_id', 'notify_deliveries', ['job_id'])
    op.create_table(
        'notify_attempts',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('delivery_id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(), nullable=False),
        sa.Column('http_status', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('duration_ms', sa.Float(), nullable=True),
        sa.Column('next_try', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['delivery_id'], ['notify_deliveries.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_notify_attempts_delivery_id', 'notify_attempts', ['delivery_id'])


def downgrade() -> None:
    op.drop_table('notify_attempts')
    op.drop_table('notify_deliveries')
    op.drop_table('notify_subscriptions')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('notify')
