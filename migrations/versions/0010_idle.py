"""Push with IMAP IDLE: when the worker's IDLE connection of an account was last seen live.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("mail_account", sa.Column("idle_seen_at", sa.DateTime(), nullable=True))


def downgrade():
    op.drop_column("mail_account", "idle_seen_at")
