"""A user's read/unread change follows the mail when its location goes before the change
reached the server (moved by another mail program, or its folder renumbered): message.seen_wanted
holds it for the location the mail turns up at next, and message_location.created_at tells
the places the mail was found at after the change (those take it).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("message", sa.Column("seen_wanted", sa.Boolean(), nullable=True))
    op.add_column("message_location", sa.Column("created_at", sa.DateTime(), nullable=True))
    op.create_index(
        "ix_message_seen_wanted",
        "message",
        ["id"],
        unique=False,
        sqlite_where=sa.text("seen_wanted IS NOT NULL"),
        postgresql_where=sa.text("seen_wanted IS NOT NULL"),
    )


def downgrade():
    op.drop_index("ix_message_seen_wanted", table_name="message")
    op.drop_column("message", "seen_wanted")
    op.drop_column("message_location", "created_at")
