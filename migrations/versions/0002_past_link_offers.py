"""Past-link offers: "link N past conversations" stays until linked or dismissed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "past_link_offer",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "person_id", "address"),
    )
    op.create_index("ix_past_link_offer_person_id", "past_link_offer", ["person_id"], unique=False)
    op.create_index("ix_past_link_offer_user_id", "past_link_offer", ["user_id"], unique=False)


def downgrade():
    op.drop_index("ix_past_link_offer_user_id", table_name="past_link_offer")
    op.drop_index("ix_past_link_offer_person_id", table_name="past_link_offer")
    op.drop_table("past_link_offer")
