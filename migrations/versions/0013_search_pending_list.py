"""PostgreSQL: the search index's pending list is kept short (256 kB instead of 4 MB).

GIN queues new entries in a pending list that every search reads through; a long first sync
filled it faster than the end of a run merges it (services/search_postgres.py). SQLite's
FTS5 has nothing like it: nothing to do there.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

from services.search_postgres import DOCUMENT_INDEX, PENDING_LIST_KB

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER INDEX {DOCUMENT_INDEX} SET (gin_pending_list_limit = {PENDING_LIST_KB})")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER INDEX {DOCUMENT_INDEX} RESET (gin_pending_list_limit)")
