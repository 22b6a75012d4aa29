"""Time the Mail tab queries at 100,000 messages: list pages, unread counts, search.

Run: python bench/mail_list.py [messages]. Prints median and p95 milliseconds per operation.
Data: a third as many threads as messages, 2% unread, 10% of subjects per search word.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, text  # noqa: E402

from app import create_app  # noqa: E402
from extensions import db  # noqa: E402
from models import MailAccount, MailFolder, Message, MessageLocation, Thread  # noqa: E402
from services import mailbox  # noqa: E402
from services.search import SearchDocument, index_messages  # noqa: E402
from services.users import create_user  # noqa: E402

WORDS = "proposal invoice renewal meeting agenda pricing contract update review launch".split()


def seed(total: int) -> None:
    user = create_user(email="bench@team.test", name="Bench", password="bench password 1")
    account = MailAccount(
        user_id=user.id,
        email_address=user.email,
        username=user.email,
        password_encrypted=b"x",
        imap_host="imap.invalid",
    )
    db.session.add(account)
    db.session.flush()
    folders = [
        MailFolder(account_id=account.id, name=name, role=role)
        for name, role in (
            ("INBOX", "inbox"),
            ("Sent", "sent"),
            ("Archive", "archive"),
            ("Trash", "trash"),
            ("Junk", "junk"),
            ("Clients", None),
        )
    ]
    db.session.add_all(folders)
    db.session.flush()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    threads = total // 3
    db.session.execute(
        insert(Thread),
        [
            {
                "id": i + 1,
                "account_id": account.id,
                "subject": f"{WORDS[i % 10]} {i}",
                "last_date": start + timedelta(minutes=i * 7),
                "message_count": 3,
                "archived": i % 11 == 0,
                "shared": i % 5 == 0,
                "deal_id": None,
            }
            for i in range(threads)
        ],
    )
    db.session.execute(
        insert(Message),
        [
            {
                "id": m + 1,
                "account_id": account.id,
                "thread_id": m % threads + 1,
                "dedup_key": f"k{m}",
                "subject": f"{WORDS[m % 10]} {m}",
                "from_name": f"Person {m % 500}",
                "from_address": f"p{m % 500}@example.test",
                "to": [["Bench", "bench@team.test"]],
                "cc": [],
                "bcc": [],
                "reply_to": [],
                "references": [],
                "date": start + timedelta(minutes=m * 2),
                "snippet": "snippet text " + WORDS[m % 7],
                "is_read": m % 50 != 0,
                "has_attachments": m % 9 == 0,
            }
            for m in range(total)
        ],
    )
    db.session.execute(
        insert(MessageLocation),
        [
            {
                "folder_id": folders[0 if m % 6 else 5].id,
                "uid": m + 1,
                "message_id": m + 1,
                "seen": m % 50 != 0,
                "keywords": [],
                "gm_labels": [],
            }
            for m in range(total)
        ],
    )
    index_messages(
        db.session.connection(),
        (
            SearchDocument(
                m + 1, f"{WORDS[m % 10]} {m}", f"Person {m % 500}", "body " + WORDS[m % 7]
            )
            for m in range(total)
        ),
    )
    db.session.commit()
    # Without statistics SQLite's planner walks low-selectivity indexes and sorts every
    # thread; production needs ANALYZE (or PRAGMA optimize) after large syncs.
    db.session.execute(text("ANALYZE"))


def timed(label: str, function, runs: int = 30) -> None:
    samples = []
    for _ in range(runs):
        begin = time.perf_counter()
        function()
        samples.append((time.perf_counter() - begin) * 1000)
    samples.sort()
    p95 = samples[int(len(samples) * 0.95) - 1]
    print(f"{label:<32} median {statistics.median(samples):7.1f} ms   p95 {p95:7.1f} ms")


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(
            {
                "TESTING": True,
                "INSTANCE_PATH": tmp,
                "SECRET_KEY": "bench",
                "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp}/bench.db",
                "SCHEDULER_ENABLED": False,
            }
        )
        with app.app_context():
            begin = time.perf_counter()
            seed(total)
            print(f"seeded {total} messages in {time.perf_counter() - begin:.1f} s")
            user = db.session.get(MailAccount, 1).user
            page = mailbox.list_threads(user, mailbox.MailboxQuery())
            second = mailbox.MailboxQuery(after=page.next_cursor or "")
            timed("inbox first page", lambda: mailbox.list_threads(user, mailbox.MailboxQuery()))
            timed("inbox second page", lambda: mailbox.list_threads(user, second))
            timed(
                "unread filter",
                lambda: mailbox.list_threads(user, mailbox.MailboxQuery(unread=True)),
            )
            timed(
                "archive",
                lambda: mailbox.list_threads(user, mailbox.MailboxQuery(folder="archive")),
            )
            timed(
                "search 'proposal'",
                lambda: mailbox.list_threads(user, mailbox.MailboxQuery(q="proposal")),
            )
            timed(
                "search rare 'person 7'",
                lambda: mailbox.list_threads(user, mailbox.MailboxQuery(q="person 7")),
            )
            timed("folders + unread counts", lambda: mailbox.list_folders(user))


if __name__ == "__main__":
    main()
