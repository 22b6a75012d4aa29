"""Own addresses: the user's aliases, learned from Sent or added by hand.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "own_address",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["mail_account.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "address"),
    )
    op.create_index("ix_own_address_account_id", "own_address", ["account_id"], unique=False)
    op.create_index("ix_own_address_user_id", "own_address", ["user_id"], unique=False)


def downgrade():
    op.drop_index("ix_own_address_user_id", table_name="own_address")
    op.drop_index("ix_own_address_account_id", table_name="own_address")
    op.drop_table("own_address")
