"""Templates, signatures, group email, the sender's phone.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("user", sa.Column("phone", sa.String(length=50), nullable=True))
    op.create_table(
        "mail_template",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_mail_template_owner_id", "mail_template", ["owner_id"], unique=False)
    op.create_table(
        "template_attachment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("template_id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.Column("content_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["template_id"], ["mail_template.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_template_attachment_template_id", "template_attachment", ["template_id"], unique=False
    )
    op.create_index(
        "ix_template_attachment_blob_sha256", "template_attachment", ["blob_sha256"], unique=False
    )
    op.create_table(
        "signature",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["mail_account.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_signature_account_id", "signature", ["account_id"], unique=False)
    op.create_table(
        "group_send",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("template_id", sa.Integer(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("pause_seconds", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["mail_account.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["template_id"], ["mail_template.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_group_send_user_id", "group_send", ["user_id"], unique=False)
    # Plain ADD COLUMN without a foreign key (see OutgoingMail.group_send_id).
    op.add_column("outgoing_mail", sa.Column("group_send_id", sa.Integer(), nullable=True))
    op.create_index(
        "ix_outgoing_mail_group_send_id", "outgoing_mail", ["group_send_id"], unique=False
    )


def downgrade():
    op.drop_index("ix_outgoing_mail_group_send_id", table_name="outgoing_mail")
    op.drop_column("outgoing_mail", "group_send_id")
    op.drop_index("ix_group_send_user_id", table_name="group_send")
    op.drop_table("group_send")
    op.drop_index("ix_signature_account_id", table_name="signature")
    op.drop_table("signature")
    op.drop_index("ix_template_attachment_blob_sha256", table_name="template_attachment")
    op.drop_index("ix_template_attachment_template_id", table_name="template_attachment")
    op.drop_table("template_attachment")
    op.drop_index("ix_mail_template_owner_id", table_name="mail_template")
    op.drop_table("mail_template")
    op.drop_column("user", "phone")
