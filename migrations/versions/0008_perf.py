"""Unread counts kept current: thread_unread rows, their stale list and triggers, backfilled.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from services import unread

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "thread_unread",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("counted_in", sa.String(length=20), nullable=False),
        sa.Column("thread_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "counted_in", "thread_id"),
    )
    op.create_index("ix_thread_unread_thread_id", "thread_unread", ["thread_id"], unique=False)
    op.create_table(
        "thread_unread_stale",
        sa.Column("thread_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("thread_id"),
    )
    connection = op.get_bind()
    unread.create_triggers(connection)
    unread.rebuild(connection)


def downgrade():
    unread.drop_triggers(op.get_bind())
    op.drop_table("thread_unread_stale")
    op.drop_index("ix_thread_unread_thread_id", table_name="thread_unread")
    op.drop_table("thread_unread")
