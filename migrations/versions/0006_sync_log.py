"""Sync log: which messages a sync pass added, changed or removed; folder comparisons.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "sync_run_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("folder", sa.String(length=500), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["run_id"], ["sync_run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sync_run_entry_run_id", "sync_run_entry", ["run_id"], unique=False)
    op.create_table(
        "folder_check",
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("checked_at", sa.DateTime(), nullable=True),
        sa.Column("server_count", sa.Integer(), nullable=False),
        sa.Column("stored_count", sa.Integer(), nullable=False),
        sa.Column("missing_here_count", sa.Integer(), nullable=False),
        sa.Column("missing_there_count", sa.Integer(), nullable=False),
        sa.Column("missing_here", sa.JSON(), nullable=False),
        sa.Column("missing_there", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["folder_id"], ["mail_folder.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("folder_id"),
    )
    # Plain ADD COLUMN (never batch mode, which would copy and drop the table).
    op.add_column(
        "sync_run",
        sa.Column("entries_not_kept", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade():
    op.drop_column("sync_run", "entries_not_kept")
    op.drop_table("folder_check")
    op.drop_index("ix_sync_run_entry_run_id", table_name="sync_run_entry")
    op.drop_table("sync_run_entry")
