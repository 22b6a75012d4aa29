"""PostgreSQL search: the index's pending list kept short, and the list of indexed words.

GIN queues new entries in a pending list that every search reads through; a long first sync
filled it faster than the end of a run merges it: 256 kB instead of 4 MB.

`thread_search_vocabulary` lists every indexed word longer than the prefix length, so a
search spells such a prefix out into the words it starts, as SQLite does
(services/search_postgres.py); filled here from the conversations already indexed. SQLite's
FTS5 has neither: nothing to do there.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

from services.search import LONGEST_PREFIX_INDEX
from services.search_postgres import DOCUMENT_INDEX, PENDING_LIST_KB, VOCABULARY_TABLE

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER INDEX {DOCUMENT_INDEX} SET (gin_pending_list_limit = {PENDING_LIST_KB})")
    op.execute(VOCABULARY_TABLE)
    op.execute(
        "INSERT INTO thread_search_vocabulary (word) "
        "SELECT DISTINCT word FROM thread_search, unnest(tsvector_to_array(document)) AS word "
        f"WHERE length(word) > {LONGEST_PREFIX_INDEX} ON CONFLICT DO NOTHING"
    )


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TABLE IF EXISTS thread_search_vocabulary")
    op.execute(f"ALTER INDEX {DOCUMENT_INDEX} RESET (gin_pending_list_limit)")
