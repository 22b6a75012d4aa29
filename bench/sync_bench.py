"""Sync benchmark: bare IMAPClient download vs. Threadline's first sync, on a local Dovecot.

Run from the repository root:  python bench/sync_bench.py [--messages 20000]
Prints each figure and writes nothing else; copy the output into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import resource
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.databases import add_database_arguments, bench_app, run_on_database  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402

TEXTS = {
    "en": "Thanks for the call today. Attached is the proposal we discussed, with pricing.",
    "de": "Vielen Dank für das Gespräch. Anbei das Angebot mit den besprochenen Preisen.",
    "fr": "Merci pour l'appel. Vous trouverez ci-joint la proposition et les tarifs.",
    "zh": "感谢今天的通话。附件是我们讨论过的报价方案，请查收。",
    "ja": "本日はお電話ありがとうございました。ご提案書を添付いたします。",
    "ru": "Спасибо за звонок. Во вложении предложение с обсуждёнными ценами.",
    "ar": "شكرا على المكالمة اليوم. مرفق العرض الذي ناقشناه مع الأسعار.",
}
SUBJECTS = [
    "Proposal",
    "Meeting next week",
    "Invoice 4411",
    "Contract draft",
    "Kickoff",
    "Angebot",
    "报价",
    "Предложение",
    "Quarterly review",
    "Renewal",
]


def _b64(text: str) -> str:
    return base64.encodebytes(text.encode()).decode().replace("\n", "\r\n")


def make_message(n: int, rng: random.Random, when: datetime, mailbox: str) -> bytes:
    """Return one realistic message: plain, HTML, or multipart with an attachment."""
    lang = rng.choice(list(TEXTS))
    text = (TEXTS[lang] + "\r\n") * rng.randint(3, 30)
    thread = n // 4  # replies in small threads, so threading has real work
    subject = SUBJECTS[thread % len(SUBJECTS)] + f" #{thread}"
    headers = [
        f"From: Contact {n % 500} <contact{n % 500}@client{n % 50}.example>",
        f"To: <{mailbox}>",
        f"Subject: {'Re: ' if n % 4 else ''}{subject}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <bench-{n}@client.example>",
        "MIME-Version: 1.0",
    ]
    if n % 4:
        headers.append(f"In-Reply-To: <bench-{n - 1}@client.example>")
        refs = " ".join(f"<bench-{i}@client.example>" for i in range(thread * 4, n))
        headers.append(f"References: {refs}")
    kind = n % 3
    if kind == 0:
        headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64"]
        body = _b64(text)
    elif kind == 1:
        headers += ["Content-Type: text/html; charset=utf-8", "Content-Transfer-Encoding: base64"]
        body = _b64(f"<html><body><p>{text}</p><p><b>Regards</b></p></body></html>")
    else:
        attachment = base64.encodebytes(rng.randbytes(rng.randint(2_000, 60_000))).decode()
        headers.append('Content-Type: multipart/mixed; boundary="b1"')
        body = (
            '--b1\r\nContent-Type: multipart/alternative; boundary="b2"\r\n\r\n'
            f"--b2\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{_b64(text)}\r\n"
            f"--b2\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{_b64('<p>' + text + '</p>')}\r\n--b2--\r\n"
            f'--b1\r\nContent-Type: application/pdf; name="offer-{n}.pdf"\r\n'
            f'Content-Disposition: attachment; filename="offer-{n}.pdf"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{attachment.replace(chr(10), chr(13) + chr(10))}"
            "--b1--\r\n"
        )
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def add_dovecot_account(app, owner, server, email: str, password: str, **columns) -> int:
    """Store a mail account of `owner` pointing at the benchmark Dovecot (plus `columns`,
    e.g. SMTP settings); return its id."""
    from extensions import db
    from models import MailAccount
    from services.credentials import secret_box

    account = MailAccount(
        user_id=owner.id,
        email_address=email,
        username=email,
        password_encrypted=secret_box(app).encrypt(password),
        imap_host=server.host,
        imap_port=server.ssl_port,
        imap_security="ssl",
        ca_cert_pem=server.ca_file.read_text(),
        since="all",
        **columns,
    )
    db.session.add(account)
    db.session.commit()
    return account.id


def fill_maildir(server: DovecotServer, email: str, count: int) -> int:
    """Write messages straight into ~/Maildir/cur (much faster than doveadm save)."""
    home = server.users[email].home
    cur = home / "Maildir" / "cur"
    for sub in ("cur", "new", "tmp"):
        (home / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(days=300)
    total = 0
    for n in range(count):
        when = start + timedelta(minutes=20 * n)
        raw = make_message(n, rng, when, email)
        total += len(raw)
        flags = "S" if n % 3 else ""
        stored = raw.replace(b"\r\n", b"\n")
        name = f"{int(when.timestamp())}.M{n}P1.bench,S={len(stored)},W={len(raw)}:2,{flags}"
        path = cur / name
        path.write_bytes(stored)
        stamp = when.timestamp()
        os.utime(path, (stamp, stamp))
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            os.chown(os.path.join(root, name), server.uid, server.gid)
    os.chown(home, server.uid, server.gid)
    return total


def settings(server: DovecotServer, email: str, password: str):
    from mailsync.imap import ConnectionSettings

    return ConnectionSettings(
        host=server.host,
        port=server.ssl_port,
        security="ssl",
        username=email,
        password=password,
        ca_cert_pem=server.ca_file.read_text(),
        timeout=120,
    )


def bare_download(
    server: DovecotServer, email: str, password: str, batch: int
) -> tuple[float, int]:
    """Download every INBOX message with plain IMAPClient (BODY.PEEK[] in batches)."""
    from mailsync.imap import connect, safe_logout
    from mailsync.sync import uid_ranges

    started = time.perf_counter()
    client = connect(settings(server, email, password), allowed_ports=None)
    client.select_folder("INBOX", readonly=True)
    uids = sorted(client.search(["ALL"]))
    got = 0
    for i in range(0, len(uids), batch):
        response = client.fetch(uid_ranges(uids[i : i + batch]), ["BODY.PEEK[]"])
        got += sum(1 for data in response.values() if data.get(b"BODY[]"))
    safe_logout(client)
    return time.perf_counter() - started, got


def _cpu_seconds(*, children: bool = False) -> float:
    """User + system CPU of this process (and of its reaped children, e.g. parse workers)."""
    usage = [resource.getrusage(resource.RUSAGE_SELF)]
    if children:
        usage.append(resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _tree_memory_mb(root: int) -> float:
    """Proportional set size (PSS) of process `root` and its descendants, in MB: what the
    process tree takes, counting pages shared between its processes once (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    total_kb, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


class _PeakMemory:
    """Samples the benchmark's process tree (this process and its parse workers) every 50 ms
    in a thread and keeps the largest total."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _tree_memory_mb(os.getpid()))

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--bare-batch", type=int, default=30)
    parser.add_argument("--profile", help="write a cProfile of the first sync to this file")
    add_database_arguments(parser)
    run_on_database(parser.parse_args(), run)


def run(args) -> None:
    server = DovecotServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="threadline-bench-"))
    try:
        email = "bench@mail.test"
        user = server.add_user(email, "bench-password")
        t0 = time.perf_counter()
        size = fill_maildir(server, email, args.messages)
        server.doveadm("index", "-u", email, "INBOX")  # let Dovecot index before timing
        print(
            f"mailbox: {args.messages} messages, {size / 1e6:.1f} MB, "
            f"generated and indexed in {time.perf_counter() - t0:.1f} s"
        )

        print(f"load average before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        cpu = _cpu_seconds()
        bare_seconds, bare_count = bare_download(server, email, user.password, args.bare_batch)
        bare_cpu = _cpu_seconds() - cpu
        bare_rate = bare_count / bare_seconds
        print(
            f"(1) bare IMAPClient download: {bare_count} msgs in {bare_seconds:.2f} s "
            f"= {bare_rate:.0f} msg/s (batches of {args.bare_batch}); "
            f"client CPU {bare_cpu:.2f} s = {bare_cpu / bare_count * 1000:.3f} ms/msg"
        )

        from extensions import db
        from mailsync import sync as sync_module
        from models import Message
        from services import users

        app = bench_app(
            workdir,
            args.database_url,
            SYNC_FETCH_THREAD=os.environ.get("SYNC_FETCH_THREAD", "1") == "1",
            **(
                {"SYNC_PARSE_WORKERS": int(os.environ["SYNC_PARSE_WORKERS"])}
                if "SYNC_PARSE_WORKERS" in os.environ
                else {}
            ),
        )
        with app.app_context():
            owner = users.create_user(
                email="owner@team.test", name="Owner", password="owner password 1", is_admin=True
            )
            account_id = add_dovecot_account(app, owner, server, email, user.password)

        first50: dict[str, float] = {}
        started = time.perf_counter()

        def progress(folder: str, done: int, total: int) -> None:
            if folder == "INBOX" and done >= min(50, total) and "t" not in first50 and done:
                first50["t"] = time.perf_counter() - started

        cpu = _cpu_seconds(children=True)
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        with _PeakMemory() as memory:
            result = sync_module.sync_account(
                account_id, app=app, budget_seconds=3600, progress=progress
            )
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        sync_seconds = time.perf_counter() - started
        sync_cpu = _cpu_seconds(children=True) - cpu
        assert result.ok, result.error
        with app.app_context():
            stored = db.session.scalar(db.select(db.func.count()).select_from(Message))
        sync_rate = stored / sync_seconds
        print(
            f"(2) Threadline first sync: {stored} msgs in {sync_seconds:.2f} s "
            f"= {sync_rate:.0f} msg/s; ratio (2)/(1) = {sync_rate / bare_rate:.2f} (target >= 0.6); "
            f"client CPU {sync_cpu:.2f} s incl. parse workers = {sync_cpu / stored * 1000:.3f} "
            f"ms/msg ({sync_cpu / stored / (bare_cpu / bare_count):.1f}x the bare download's)"
        )
        print(
            f"(4) newest 50 in the database after {first50.get('t', float('nan')):.2f} s "
            "(target < 2 s)"
        )

        durations: list[float] = []
        original = sync_module.AccountSync.sync_folder

        def timed(self, folder_id):
            t = time.perf_counter()
            try:
                return original(self, folder_id)
            finally:
                durations.append(time.perf_counter() - t)

        sync_module.AccountSync.sync_folder = timed
        t = time.perf_counter()
        result = sync_module.sync_account(account_id, app=app, budget_seconds=60)
        tick = time.perf_counter() - t
        sync_module.AccountSync.sync_folder = original
        assert result.ok and result.new == 0, result
        worst = max(durations) * 1000
        print(
            f"(3) no-change tick: {tick * 1000:.0f} ms total incl. connect/login/LIST for "
            f"{len(durations)} folders; per folder mean {sum(durations) / len(durations) * 1000:.1f}"
            f" ms, worst {worst:.1f} ms (target < 50 ms)"
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"(5) peak RSS of the whole benchmark process: {peak:.0f} MB (target < 250 MB); "
            f"largest reaped child (doveadm or a parse worker) {workers:.0f} MB; peak of the whole"
            f" process tree during the "
            f"first sync (PSS, this process and its parse workers, sampled every 50 ms): "
            f"{memory.peak:.0f} MB"
        )
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
