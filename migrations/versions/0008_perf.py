"""Unread counts kept current (thread_unread, its stale list, triggers; backfilled); record
panel indexes (deal/lead/project, last_date, id) for paging a record's conversations.

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
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("thread_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for record in ("deal", "lead", "project"):
        op.create_index(
            f"ix_thread_{record}_last_date",
            "thread",
            [f"{record}_id", "last_date", "id"],
            unique=False,
        )
    connection = op.get_bind()
    unread.create_triggers(connection)
    unread.rebuild(connection, labels=False)  # message_label comes with 0012


def downgrade():
    unread.drop_triggers(op.get_bind())
    for record in ("deal", "lead", "project"):
        op.drop_index(f"ix_thread_{record}_last_date", table_name="thread")
    op.drop_table("thread_unread_stale")
    op.drop_index("ix_thread_unread_thread_id", table_name="thread_unread")
    op.drop_table("thread_unread")
