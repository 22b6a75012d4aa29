"""Outgoing mail: drafts, queued and sent mail with their attachments; SMTP account settings.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "outgoing_mail",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("to", sa.JSON(), nullable=False),
        sa.Column("cc", sa.JSON(), nullable=False),
        sa.Column("bcc", sa.JSON(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=False),
        sa.Column("reply_kind", sa.String(length=10), nullable=True),
        sa.Column("source_message_id", sa.Integer(), nullable=True),
        sa.Column("in_reply_to", sa.String(length=998), nullable=True),
        sa.Column("references", sa.JSON(), nullable=False),
        sa.Column("record_kind", sa.String(length=20), nullable=True),
        sa.Column("record_id", sa.Integer(), nullable=True),
        sa.Column("message_id_header", sa.String(length=998), nullable=True),
        sa.Column("send_at", sa.DateTime(), nullable=True),
        sa.Column("scheduled", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("thread_id", sa.Integer(), nullable=True),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["mail_account.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["source_message_id"], ["message.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["thread_id"], ["thread.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_outgoing_mail_account_id", "outgoing_mail", ["account_id"], unique=False)
    op.create_index("ix_outgoing_mail_due", "outgoing_mail", ["state", "send_at"], unique=False)
    op.create_index(
        "ix_outgoing_mail_message_id_header", "outgoing_mail", ["message_id_header"], unique=False
    )
    op.create_index("ix_outgoing_mail_user_state", "outgoing_mail", ["user_id", "state"])

    op.create_table(
        "outgoing_attachment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mail_id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.Column("content_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["mail_id"], ["outgoing_mail.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_outgoing_attachment_blob_sha256", "outgoing_attachment", ["blob_sha256"], unique=False
    )
    op.create_index(
        "ix_outgoing_attachment_mail_id", "outgoing_attachment", ["mail_id"], unique=False
    )

    # Plain ADD COLUMN, never batch mode: SQLite's batch mode copies and drops mail_account,
    # and dropping it would cascade-delete every account's mail.
    op.add_column("mail_account", sa.Column("smtp_username", sa.String(length=320)))
    op.add_column("mail_account", sa.Column("smtp_password_encrypted", sa.LargeBinary()))
    op.add_column(
        "mail_account",
        sa.Column("smtp_files_sent_copy", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("mail_account", sa.Column("max_message_bytes", sa.Integer()))


def downgrade():
    op.drop_column("mail_account", "max_message_bytes")
    op.drop_column("mail_account", "smtp_files_sent_copy")
    op.drop_column("mail_account", "smtp_password_encrypted")
    op.drop_column("mail_account", "smtp_username")
    op.drop_index("ix_outgoing_attachment_mail_id", table_name="outgoing_attachment")
    op.drop_index("ix_outgoing_attachment_blob_sha256", table_name="outgoing_attachment")
    op.drop_table("outgoing_attachment")
    op.drop_index("ix_outgoing_mail_user_state", table_name="outgoing_mail")
    op.drop_index("ix_outgoing_mail_message_id_header", table_name="outgoing_mail")
    op.drop_index("ix_outgoing_mail_due", table_name="outgoing_mail")
    op.drop_index("ix_outgoing_mail_account_id", table_name="outgoing_mail")
    op.drop_table("outgoing_mail")
