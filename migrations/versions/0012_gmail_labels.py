"""Gmail labels as folders: message_label (a label's folder holds a message), derived from
the locations' X-GM-LABELS, and the triggers that keep the labels' unread counts current.

Gmail accounts synced before this get their labels as their messages' flags are read again
(mailsync.store.refresh_labels runs whenever a location's labels change).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from services import unread

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "message_label",
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["folder_id"], ["mail_folder.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("folder_id", "message_id"),
    )
    op.create_index("ix_message_label_message_id", "message_label", ["message_id"], unique=False)
    unread.create_triggers(op.get_bind(), unread.LABEL_TRIGGERS)


def downgrade():
    unread.drop_triggers(op.get_bind(), unread.LABEL_TRIGGERS)
    op.drop_index("ix_message_label_message_id", table_name="message_label")
    op.drop_table("message_label")
