"""Date conversations by their newest shown message.

A conversation's `last_date` now leaves out mail its owner's blocks hide (mailsync/store.py
refresh_threads, services/linking.py refresh_thread_blocked), so hidden mail neither moves
a shared conversation up a teammate's record panel nor up the owner's lists. Conversations
stored before keep their old date until something refreshes them: this dates those holding
hidden mail now. Data only; the SQL is spelled out here, not imported, so this migration
stays what it is when the code changes.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade():
    op.execute(
        """
        UPDATE thread SET last_date = COALESCE(
          (SELECT max(coalesce(m.date, m.internaldate)) FROM message m
           WHERE m.thread_id = thread.id AND m.deleted_at IS NULL AND NOT m.blocked),
          last_date)
        WHERE EXISTS (SELECT 1 FROM message m
                      WHERE m.thread_id = thread.id AND m.deleted_at IS NULL AND m.blocked)
        """
    )


def downgrade():
    pass  # the dates stay: the previous release reads them as they are
