"""PostgreSQL: the thread list indexes yield last_date DESC NULLS LAST when read backwards.

Without `last_date NULLS FIRST` a backward scan gives NULLS FIRST, so PostgreSQL could not
walk them in the Mail tab's order and sorted every thread of the account instead (see
models.NEWEST_LAST_DATE). SQLite: nothing to do (it sorts NULL first already).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# name -> (leading column, partial index WHERE or None), as models.Thread.__table_args__
INDEXES = {
    "ix_thread_account_last_date": ("account_id", None),
    "ix_thread_deal_last_date": ("deal_id", None),
    "ix_thread_lead_last_date": ("lead_id", None),
    "ix_thread_project_last_date": ("project_id", None),
    "ix_thread_inbox": (
        "account_id",
        "in_inbox IS true AND archived IS false AND deleted_at IS NULL",
    ),
    "ix_thread_reply_later": ("account_id", "reply_later IS true AND deleted_at IS NULL"),
    "ix_thread_archive_list": ("account_id", "archived IS true AND deleted_at IS NULL"),
}


def _rebuild(nulls_first: bool) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, (leading, where) in INDEXES.items():
        op.drop_index(name, table_name="thread")
        op.create_index(
            name,
            "thread",
            [leading, "last_date", "id"],
            unique=False,
            postgresql_where=sa.text(where) if where else None,
            postgresql_ops={"last_date": "NULLS FIRST"} if nulls_first else {},
        )


def upgrade():
    _rebuild(nulls_first=True)


def downgrade():
    _rebuild(nulls_first=False)
