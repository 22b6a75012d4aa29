"""OAuth2 sign-in for mail accounts: the admin's client registrations and each account's
auth type, refresh token (encrypted) and access-token expiry.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "oauth_client",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("client_id", sa.String(length=500), nullable=False),
        sa.Column("client_secret_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider"),
    )
    # Plain ADD COLUMN, never batch mode: SQLite's batch mode copies and drops mail_account,
    # and dropping it would cascade-delete every account's mail.
    op.add_column(
        "mail_account",
        sa.Column("auth_type", sa.String(length=20), server_default="password", nullable=False),
    )
    op.add_column("mail_account", sa.Column("refresh_token_encrypted", sa.LargeBinary()))
    op.add_column("mail_account", sa.Column("token_expires_at", sa.DateTime()))


def downgrade():
    op.drop_column("mail_account", "token_expires_at")
    op.drop_column("mail_account", "refresh_token_encrypted")
    op.drop_column("mail_account", "auth_type")
    op.drop_table("oauth_client")
