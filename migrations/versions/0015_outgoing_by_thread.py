"""Sent mail by conversation: the conversation page names the recipients the mail server
refused for mail sent from Threadline (read by thread, for the conversation shown).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_outgoing_mail_thread_id", "outgoing_mail", ["thread_id"])


def downgrade():
    op.drop_index("ix_outgoing_mail_thread_id", table_name="outgoing_mail")
