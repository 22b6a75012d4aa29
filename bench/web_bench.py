"""Web benchmark: server time of the Mail tab, conversation, search and deal pages at scale.

Run from the repository root:  python bench/web_bench.py [--messages 100000] [--keep DIR]
(--keep DIR seeds once into DIR and later runs start from a copy of that seeded database;
 with --database-url the copy is a template database on that server, `<name>_seeded`.)
Seeds a temp instance through the real ingest path (generated MIME -> BlobStore + parse in a
process pool -> mailsync.store.store_batch), refreshes planner statistics as a sync does,
then times each endpoint with the Flask test client, idle and while a real Dovecot sync of a
second account runs where production runs it: in a separate process at the worker's lower
CPU priority (WORKER_NICE), here a `flask sync` of that account.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.databases import add_database_arguments, bench_app, run_on_database  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OWNER = "owner@team.test"
PASSWORD = "owner password 1"
ORGS = 300
PERSONS = 2000
FIRST = "anna ben carla david elena farid grace hiro ines jonas kim lena marco nora omar paula"
LAST = "schmidt meyer dubois martin rossi tanaka ivanov haddad garcia novak larsen silva"
FIRST_NAMES, LAST_NAMES = FIRST.split(), LAST.split()
GREETINGS = {
    "en": ("Hi {name},", "Best regards"),
    "de": ("Hallo {name},", "Viele Grüße"),
    "fr": ("Bonjour {name},", "Cordialement"),
    "es": ("Hola {name},", "Saludos"),
    "ja": ("{name}様", "よろしくお願いいたします"),
    "ru": ("Здравствуйте, {name}!", "С уважением"),
}
SENTENCES = {
    "en": [
        "Thanks for the call today, the proposal is attached",
        "Could we move the meeting to Thursday afternoon",
        "The invoice for last quarter is overdue, please check",
        "We reviewed the contract draft and have two comments",
        "Pricing for the renewal stays the same as last year",
        "Let me know when the team has feedback on the pilot",
        "Shipping was delayed by the warehouse, new date next week",
    ],
    "de": [
        "Vielen Dank für das Gespräch, anbei das Angebot",
        "Können wir den Termin auf Donnerstag verschieben",
        "Die Rechnung für das letzte Quartal ist noch offen",
        "Wir haben den Vertragsentwurf geprüft und zwei Anmerkungen",
    ],
    "fr": [
        "Merci pour l'appel, vous trouverez la proposition ci-jointe",
        "Pouvons-nous déplacer la réunion à jeudi après-midi",
        "La facture du dernier trimestre reste impayée",
    ],
    "es": [
        "Gracias por la llamada, adjunto la propuesta",
        "¿Podemos mover la reunión al jueves por la tarde?",
        "La factura del último trimestre sigue pendiente",
    ],
    "ja": [
        "本日はお電話ありがとうございました。",
        "ご提案書を添付いたします。",
        "請求書をご確認ください。",
    ],
    "ru": [
        "Спасибо за звонок, предложение во вложении.",
        "Можем ли мы перенести встречу на четверг?",
    ],
}
TOPICS = [
    "Proposal",
    "Meeting next week",
    "Invoice",
    "Contract draft",
    "Kickoff",
    "Renewal",
    "Quarterly review",
    "Pilot feedback",
    "Shipping update",
    "Pricing question",
]
RARE_WORD = "zanzibarite"  # in about one message of 2,000
COMMON_WORD = "proposal"


def org_domain(org: int) -> str:
    """Return the mail domain of organization `org`."""
    return f"org{org}.example"


def person_identity(p: int) -> tuple[str, str]:
    """Return (name, address) of person `p`; the address matches a PersonEmail."""
    first, last = FIRST_NAMES[p % len(FIRST_NAMES)], LAST_NAMES[p // 16 % len(LAST_NAMES)]
    return f"{first.title()} {last.title()}", f"{first}.{last}.{p}@{org_domain(p % ORGS)}"


def _b64(text: str) -> str:
    return base64.encodebytes(text.encode()).decode().replace("\n", "\r\n")


@dataclass
class Generated:
    role: str  # "inbox" or "sent"
    raw: bytes
    when: datetime
    seen: bool


def thread_messages(t: int, start: datetime, span_minutes: int) -> list[Generated]:
    """Return the 1-6 messages of generated thread `t`: a contact (or stranger) and the owner."""
    rng = random.Random(t)
    size = rng.choices([1, 2, 3, 4, 5, 6], weights=[30, 25, 18, 12, 9, 6])[0]
    lang = rng.choices(list(GREETINGS), weights=[60, 12, 8, 8, 6, 6])[0]
    if rng.random() < 0.8:
        p = rng.randrange(PERSONS)
        name, address = person_identity(p)
    else:
        name, address = f"Stranger {t}", f"info{t % 997}@vendor{t % 211}.example"
    subject = f"{TOPICS[t % len(TOPICS)]} {t}"
    when = start + timedelta(minutes=span_minutes * t)
    messages: list[Generated] = []
    refs: list[str] = []
    for n in range(size):
        incoming = n % 2 == 0
        sender, recipient = ((name, address), ("Owner", OWNER))[:: 1 if incoming else -1]
        greeting, closing = GREETINGS[lang]
        lines = [greeting.format(name=recipient[0].split()[0])]
        lines += rng.choices(SENTENCES[lang], k=rng.randint(2, 8))
        if rng.random() < 0.0005 * (1 + n):
            lines.append(f"Reference {RARE_WORD} attached.")
        lines += [closing, sender[0]]
        text = "\r\n\r\n".join(lines)
        msgid = f"<t{t}.m{n}@{'team.test' if not incoming else address.split('@')[1]}>"
        headers = [
            f'From: "{sender[0]}" <{sender[1]}>',
            f'To: "{recipient[0]}" <{recipient[1]}>',
            f"Subject: {'Re: ' if n else ''}{subject}",
            f"Date: {format_datetime(when)}",
            f"Message-ID: {msgid}",
            "MIME-Version: 1.0",
        ]
        if refs:
            headers += [f"In-Reply-To: {refs[-1]}", f"References: {' '.join(refs)}"]
        kind = rng.random()
        if kind < 0.55:
            headers += [
                "Content-Type: text/plain; charset=utf-8",
                "Content-Transfer-Encoding: 8bit",
            ]
            body = text
        elif kind < 0.85:
            headers += [
                "Content-Type: text/html; charset=utf-8",
                "Content-Transfer-Encoding: base64",
            ]
            html = "".join(f"<p>{line}</p>" for line in text.split("\r\n\r\n"))
            body = _b64(f"<html><body>{html}</body></html>")
        else:
            blob = base64.encodebytes(rng.randbytes(rng.randint(1_000, 8_000))).decode()
            headers.append('Content-Type: multipart/mixed; boundary="b1"')
            body = (
                "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: base64\r\n\r\n{_b64(text)}\r\n"
                f'--b1\r\nContent-Type: application/pdf; name="doc-{t}-{n}.pdf"\r\n'
                f'Content-Disposition: attachment; filename="doc-{t}-{n}.pdf"\r\n'
                f"Content-Transfer-Encoding: base64\r\n\r\n{blob.replace(chr(10), chr(13) + chr(10))}"
                "--b1--\r\n"
            )
        raw = ("\r\n".join(headers) + "\r\n\r\n" + body).encode()
        messages.append(Generated("inbox" if incoming else "sent", raw, when, rng.random() > 0.03))
        refs.append(msgid)
        when += timedelta(minutes=rng.randint(5, 600))
    return messages


def prepare_threads(blob_root: str, first: int, last: int, start: datetime, span: int):
    """Generate threads [first, last), write blobs and parse them (runs in a worker process)."""
    from mailsync.prepare import prepare_batch

    generated = [m for t in range(first, last) for m in thread_messages(t, start, span)]
    prepared = prepare_batch(blob_root, [(i, m.raw) for i, m in enumerate(generated)])
    return [(m.role, m.when, m.seen, p) for m, p in zip(generated, prepared, strict=True)]


# --------------------------------------------------------------------------- seeding


def seed_team(app) -> dict[str, object]:
    """Create users, organizations, persons with emails, deals, and the owner's account."""
    from extensions import db
    from models import Deal, MailAccount, MailFolder, Organization, Person, PersonEmail
    from services import users

    owner = users.create_user(email=OWNER, name="Owner", password=PASSWORD, is_admin=True)
    mates = [
        users.create_user(email=f"mate{i}@team.test", name=f"Mate {i}", password=PASSWORD)
        for i in range(4)
    ]
    team = [owner, *mates]
    orgs = [
        Organization(
            owner_id=team[o % 5].id, visibility="everyone", name=f"Org {o}", domain=org_domain(o)
        )
        for o in range(ORGS)
    ]
    db.session.add_all(orgs)
    db.session.flush()
    persons = []
    for p in range(PERSONS):
        name, address = person_identity(p)
        person = Person(
            owner_id=team[p % 5].id,
            visibility="everyone" if p % 10 else "owner",
            name=name,
            organization_id=orgs[p % ORGS].id,
        )
        person.emails.append(PersonEmail(email=address, is_primary=True))
        persons.append(person)
    db.session.add_all(persons)
    db.session.flush()
    deals = [
        Deal(
            owner_id=team[d % 5].id,
            visibility="everyone",
            title=f"Deal {d} with {persons[d * 3].name}",
            value=1000 + d,
            status="open" if d % 4 else "won",
            person_id=persons[d * 3].id,
            organization_id=persons[d * 3].organization_id,
        )
        for d in range(600)
    ]
    db.session.add_all(deals)
    account = MailAccount(
        user_id=owner.id,
        email_address=OWNER,
        username=OWNER,
        password_encrypted=b"x",
        imap_host="imap.invalid",
    )
    db.session.add(account)
    db.session.flush()
    folders = {
        role: MailFolder(account_id=account.id, name=name, role=role)
        for name, role in (("INBOX", "inbox"), ("Sent", "sent"), ("Trash", "trash"))
    }
    db.session.add_all(folders.values())
    db.session.commit()
    return {"account_id": account.id, "folders": {r: f.id for r, f in folders.items()}}


def seed_mail(app, target: int, team: dict, workers: int = 2) -> int:
    """Ingest about `target` messages through store_batch; return how many were stored."""
    from extensions import db
    from mailsync import store
    from models import MailAccount
    from services.search import merge_pending_entries

    with app.app_context():
        ctx = store.context_for(db.session.get(MailAccount, team["account_id"]))
    threads = int(target / 2.6)  # the mean thread size of thread_messages
    start = datetime.now(UTC) - timedelta(days=730)
    span = max(1, 730 * 24 * 60 // threads)
    blob_root = str(Path(app.instance_path) / "blobs")
    step = 400
    uids = {"inbox": 0, "sent": 0}
    stored = 0
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    try:
        futures = [
            pool.submit(prepare_threads, blob_root, a, min(a + step, threads), start, span)
            for a in range(0, threads, step)
        ]
        with app.app_context():
            for future in futures:
                items = []
                for role, when, seen, prepared in future.result():
                    uids[role] += 1
                    items.append(
                        store.Fetched(
                            folder_id=team["folders"][role],
                            uid=uids[role],
                            flags=[b"\\Seen"] if seen or role == "sent" else [],
                            dedup_key=prepared.dedup_key,
                            parsed=prepared.parsed,
                            raw_sha256=prepared.raw_sha256,
                            size=prepared.size,
                            internaldate=when,
                        )
                    )
                stored += store.store_batch(ctx, items, takeover=False)
                db.session.commit()
                if stored >= target:
                    break
            # What the worker does after a sync run that stored mail.
            store.refresh_statistics(stored)
            merge_pending_entries(db.session.connection())
            db.session.commit()
    finally:
        pool.shutdown(cancel_futures=True)
    return stored


# --------------------------------------------------------------------------- timing


@dataclass
class Endpoint:
    label: str
    urls: list[str]


def endpoints(app) -> list[Endpoint]:
    """Pick the URLs to time: list pages, threads, searches, a busy deal, the sidebar."""
    from sqlalchemy import func, select

    from extensions import db
    from models import Deal, Thread
    from services import mailbox

    with app.app_context():
        threads = (
            db.session.scalars(
                select(Thread)
                .order_by(Thread.last_date.desc(), Thread.id.desc())
                .offset(20_000)
                .limit(1)
            ).all()
            or db.session.scalars(select(Thread).order_by(Thread.id).limit(1)).all()
        )
        deep = mailbox._encode_cursor(threads[0])
        rng = random.Random(3)
        ids = db.session.scalars(select(Thread.id).order_by(func.random()).limit(200)).all()
        big = db.session.scalars(
            select(Thread.id).order_by(Thread.message_count.desc()).limit(10)
        ).all()
        deal_rows = db.session.execute(
            select(Thread.deal_id, func.count())
            .where(Thread.deal_id.is_not(None))
            .group_by(Thread.deal_id)
            .order_by(func.count().desc())
            .limit(5)
        ).all()
        deal_ids = [row[0] for row in deal_rows] or db.session.scalars(
            select(Deal.id).limit(5)
        ).all()
        _name, address = person_identity(1234)
    return [
        Endpoint("inbox first page", ["/mail/"]),
        Endpoint("inbox deep keyset page", [f"/mail/rows?after={deep}"]),
        Endpoint("folders + unread counts", ["/mail/folders"]),
        Endpoint("Sent folder (40,000 messages)", ["/mail/?folder=sent"]),
        Endpoint("empty Trash folder", ["/mail/?folder=trash"]),
        Endpoint(
            "conversation view",
            [f"/mail/threads/{i}" for i in [*rng.sample(ids, min(20, len(ids))), *big[:5]]],
        ),
        Endpoint(f"search common '{COMMON_WORD}'", [f"/mail/?q={COMMON_WORD}"]),
        Endpoint(f"search rare '{RARE_WORD}'", [f"/mail/?q={RARE_WORD}"]),
        Endpoint(
            "search as you type 'p', 'pr', 'pro'", ["/mail/?q=p", "/mail/?q=pr", "/mail/?q=pro"]
        ),
        Endpoint(
            f"search '{COMMON_WORD}' in empty Trash", [f"/mail/?q={COMMON_WORD}&folder=trash"]
        ),
        Endpoint("search participant address", [f"/mail/?q={address}"]),
        Endpoint("deal page", [f"/deals/{d}" for d in deal_ids]),
        Endpoint(
            "deal email panel (lazy)", [f"/mail/records/deal/{d}/conversations" for d in deal_ids]
        ),
    ]


Samples = dict[str, list[tuple[float, float]]]  # label -> (wall ms, this thread's CPU ms)


def measure(
    client, targets: list[Endpoint], rounds: int, keep_going: Callable[[], bool] = lambda: True
) -> Samples:
    """Time `rounds` round-robin passes over the endpoints; return samples per label."""
    samples: Samples = {e.label: [] for e in targets}
    for r in range(rounds):
        if not keep_going():
            break
        for endpoint in targets:
            url = endpoint.urls[r % len(endpoint.urls)]
            began, cpu = time.perf_counter(), time.thread_time()
            response = client.get(url)
            samples[endpoint.label].append(
                ((time.perf_counter() - began) * 1000, (time.thread_time() - cpu) * 1000)
            )
            assert response.status_code == 200, (url, response.status_code)
    return samples


def pct(values: list[float], q: float) -> float:
    """Return the q-quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


def warm(client, targets: list[Endpoint]) -> None:
    """Request every URL once (template compile, page cache)."""
    for endpoint in targets:
        for url in endpoint.urls:
            client.get(url)


# --------------------------------------------------------------------------- background sync


def start_sync(app, messages: int) -> tuple[threading.Thread, Callable[[], None], dict]:
    """Fill a Dovecot mailbox and return a thread that syncs it into the owner's second account.

    The thread runs the pass in its own niced process, as the worker does; its time includes
    that process's start (building the app, about a second).
    """
    import sync_bench

    from extensions import db
    from models import User
    from tests.servers.dovecot import DovecotServer

    server = DovecotServer().start()
    email = "second@mail.test"
    mail_user = server.add_user(email, "bench-password")
    sync_bench.fill_maildir(server, email, messages)
    server.doveadm("index", "-u", email, "INBOX")
    with app.app_context():
        owner = db.session.scalar(db.select(User).where(User.email == OWNER))
        account_id = sync_bench.add_dovecot_account(app, owner, server, email, mail_user.password)
    outcome: dict = {}

    nice = int(app.config.get("WORKER_NICE", 10))
    env = {
        **os.environ,
        "THREADLINE_INSTANCE_PATH": app.instance_path,
        "THREADLINE_SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
        "THREADLINE_SECRET_KEY": app.config["SECRET_KEY"],
    }
    # Dovecot listens on a random port; the sync process reads this from the instance.
    (Path(app.instance_path) / "config.py").write_text("MAIL_ALLOWED_PORTS = None\n")
    command = [sys.executable, "-m", "flask", "--app", "app", "sync"]
    command += ["--account", str(account_id), "--budget", "3600"]

    def run() -> None:
        began = time.perf_counter()
        done = subprocess.run(
            command,
            env=env,
            cwd=REPO,
            preexec_fn=lambda: os.nice(nice),
            capture_output=True,
            text=True,
        )
        outcome["result"] = SimpleNamespace(new=done.stdout.strip() or done.stderr.strip())
        outcome["seconds"] = time.perf_counter() - began

    worker = threading.Thread(target=run, name="sync", daemon=True)
    return worker, server.stop, outcome


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--sync-messages", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=100)  # p95 of 40 samples is the 3rd worst
    parser.add_argument("--keep", help="seed into (or reuse the seeded instance in) this dir")
    add_database_arguments(parser)
    run_on_database(parser.parse_args(), run)


def run(args) -> None:
    from cli import keep_startup_objects_out_of_gc

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="threadline-webbench-"))
    reuse = (workdir / "seeded.db").exists() or (workdir / "seeded.postgres").exists()
    if reuse:  # start from the seeded state: the previous run synced a second account
        db_restore(workdir, args.database_url)
    app = bench_app(workdir, args.database_url, WTF_CSRF_ENABLED=False)
    print(f"database: {app.config['SQLALCHEMY_DATABASE_URI'].split(':')[0]}")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    began = time.perf_counter()
    if not reuse:
        with app.app_context():
            team = seed_team(app)
        stored = seed_mail(app, args.messages, team)
        print(
            f"seeded {stored} messages through store_batch in {time.perf_counter() - began:.0f} s"
            f" ({stored / (time.perf_counter() - began):.0f} msg/s)"
        )
        if args.keep:
            with app.app_context():
                db_keep(app, workdir, args.database_url)
    with app.app_context():
        from sqlalchemy import func, select

        from extensions import db
        from models import Message, MessagePerson, Thread

        counts = [
            db.session.scalar(select(func.count()).select_from(model))
            for model in (Thread, MessagePerson)
        ]
        linked = db.session.scalar(select(func.count()).where(Thread.deal_id.is_not(None)))
        total = db.session.scalar(select(func.count()).select_from(Message))
        print(f"{total} messages, {counts[0]} threads, {counts[1]} person links, {linked} on deals")

    client = app.test_client()
    response = client.post("/login", data={"email": OWNER, "password": PASSWORD})
    assert response.status_code == 302, response.status_code
    targets = endpoints(app)
    keep_startup_objects_out_of_gc()  # as `flask serve` does before serving
    warm(client, targets)

    print(f"\nidle (load average {os.getloadavg()[0]:.1f}), {args.rounds} samples each")
    idle = measure(client, targets, args.rounds)
    report(idle)

    worker, stop_server, outcome = start_sync(app, args.sync_messages)
    try:
        print(f"\nduring a sync of {args.sync_messages} messages (load {os.getloadavg()[0]:.1f})")
        worker.start()
        time.sleep(1.0)  # past connect and folder discovery, into the body download
        loaded = measure(client, targets, args.rounds * 10, keep_going=worker.is_alive)
        worker.join()
    finally:
        stop_server()
    result = outcome.get("result")
    print(
        f"sync: {getattr(result, 'new', '?')} new in {outcome.get('seconds', 0):.1f} s, "
        f"error {getattr(result, 'error', None)}; load average {os.getloadavg()[0]:.1f}"
    )
    report(loaded, idle)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


def db_keep(app, workdir: Path, database_url: str | None) -> None:
    """Save the seeded database for later runs with --keep: SQLite as seeded.db, PostgreSQL as
    a template database `<name>_seeded` beside it (the server must outlive this run)."""
    from extensions import db

    db.session.remove()
    if database_url:
        db.engine.dispose()  # CREATE DATABASE ... TEMPLATE needs no one connected to it
        name = _postgres_admin(database_url, 'CREATE DATABASE "{name}_seeded" TEMPLATE "{name}"')
        (workdir / "seeded.postgres").write_text(name)
        return
    with db.engine.connect() as connection:
        connection.exec_driver_sql(f"VACUUM INTO '{workdir / 'seeded.db'}'")


def db_restore(workdir: Path, database_url: str | None) -> None:
    """Start from the database db_keep saved (the previous run synced a second account)."""
    if database_url:
        _postgres_admin(database_url, 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _postgres_admin(database_url, 'CREATE DATABASE "{name}" TEMPLATE "{name}_seeded"')
        return
    shutil.copyfile(workdir / "seeded.db", workdir / "threadline.db")
    for suffix in ("-wal", "-shm"):
        (workdir / f"threadline.db{suffix}").unlink(missing_ok=True)


def _postgres_admin(database_url: str, statement: str) -> str:
    """Run `statement` ({name} = the benchmark's database) from the server's postgres database."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    admin = url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(statement.format(name=url.database))
    return url.database


def report(samples: Samples, idle: Samples | None = None) -> None:
    """Print wall p50/p95 (and CPU p50) per endpoint, with loaded/idle ratios given `idle`."""
    for label, pairs in samples.items():
        if not pairs:
            print(f"  {label:<40} no samples")
            continue
        wall = [w for w, _cpu in pairs]
        p50, p95 = statistics.median(wall), pct(wall, 0.95)
        cpu = statistics.median(c for _w, c in pairs)
        line = (
            f"  {label:<40} n={len(wall):<4} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms"
            f"  (cpu p50 {cpu:6.1f} ms)"
        )
        if idle is not None and idle.get(label):
            base = [w for w, _cpu in idle[label]]
            line += (
                f"  ratio p50 {p50 / statistics.median(base):4.2f}"
                f"  p95 {p95 / pct(base, 0.95):4.2f}"
            )
        print(line)


if __name__ == "__main__":
    main()
