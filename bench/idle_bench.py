"""Push benchmark: from `doveadm save` to the message row and to the Mail tab, with IMAP IDLE
and with polling only (IDLE_ENABLED off), in the same run on the same local Dovecot.

Run from the repository root:  python bench/idle_bench.py [--deliveries 20]
A real worker process (`flask worker`) runs each mode; deliveries come at random moments so
the polling figures average over where in its interval a mail lands. The polling baseline
uses a short interval (--poll-interval, default 20 s) to keep the run short: with the
default SYNC_INTERVAL_SECONDS of 120 s its latency scales up by 6x. Prints each figure and
writes nothing else; copy the output into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.databases import add_database_arguments, bench_app, run_on_database  # noqa: E402
from bench.sync_bench import add_dovecot_account  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402


def raw_message(n: int, to: str) -> bytes:
    return (
        f"From: Alice <alice@example.com>\r\nTo: <{to}>\r\nSubject: Push bench {n}\r\n"
        f"Message-ID: <push-bench-{n}-{time.time_ns()}@example.com>\r\n"
        f"Date: Sun, 06 Dec 2026 12:00:00 +0000\r\n\r\nHello {n}.\r\n"
    ).encode()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def start_worker(app, database_url: str, **config) -> subprocess.Popen:
    instance = Path(app.instance_path)
    settings = {"MAIL_ALLOWED_PORTS": None, "SYNC_START_DELAY_SECONDS": 0, **config}
    (instance / "config.py").write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    env = {
        **os.environ,
        "THREADLINE_INSTANCE_PATH": str(instance),
        "THREADLINE_SQLALCHEMY_DATABASE_URI": database_url,
        "THREADLINE_SECRET_KEY": "bench",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "worker"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_worker(worker: subprocess.Popen) -> None:
    worker.terminate()
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def measure(
    client, server, email, account_id, *, mode, deliveries, gap, first
) -> tuple[float, float]:
    """Deliver `deliveries` mails, each `gap` seconds apart on average; print p50/p95."""
    from sqlalchemy import select

    from extensions import db
    from models import MailAccount, Message

    def fresh_account() -> MailAccount:
        db.session.rollback()
        return db.session.get(MailAccount, account_id)

    deadline = time.monotonic() + 120
    while fresh_account().last_success_at is None or (
        mode == "idle" and fresh_account().idle_seen_at is None
    ):
        if time.monotonic() > deadline:
            raise SystemExit(f"{mode}: the worker did not get ready within 120 s")
        time.sleep(0.05)
    to_row: list[float] = []
    to_page: list[float] = []
    for n in range(first, first + deliveries):
        time.sleep(random.uniform(0, 2 * gap))  # a random moment within the poll interval
        subject = f"Push bench {n}"
        began = time.monotonic()
        server.deliver(email, raw_message(n, email))
        row_at = page_at = None
        while row_at is None or page_at is None:
            now = time.monotonic()
            if now - began > 600:
                raise SystemExit(f"{mode}: delivery {n} never showed")
            if row_at is None:
                db.session.rollback()
                if db.session.scalar(select(Message.id).where(Message.subject == subject)):
                    row_at = time.monotonic()
            if page_at is None and row_at is not None:
                if subject in client.get("/mail/").get_data(as_text=True):
                    page_at = time.monotonic()
            time.sleep(0.01)
        to_row.append(row_at - began)
        to_page.append(page_at - began)
    print(
        f"{mode:>8}: {deliveries} deliveries; save -> row p50 {statistics.median(to_row):.2f} s, "
        f"p95 {percentile(to_row, 0.95):.2f} s, max {max(to_row):.2f} s; "
        f"save -> Mail tab p50 {statistics.median(to_page):.2f} s, "
        f"p95 {percentile(to_page, 0.95):.2f} s"
    )
    return statistics.median(to_row), percentile(to_row, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=20, help="deliveries with IDLE")
    parser.add_argument(
        "--baseline-deliveries", type=int, default=8, help="deliveries with polling only"
    )
    parser.add_argument("--poll-interval", type=int, default=20, help="SYNC_INTERVAL_SECONDS")
    add_database_arguments(parser)
    run_on_database(parser.parse_args(), run)


def run(args) -> None:
    server = DovecotServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="threadline-idle-bench-"))
    worker = None
    try:
        email = "push@mail.test"
        mail_user = server.add_user(email, "bench-password")

        from services import users

        database_url = args.database_url or f"sqlite:///{workdir / 'threadline.db'}"
        # WTF_CSRF_ENABLED off: the bench signs in with a plain POST
        app = bench_app(workdir, database_url, WTF_CSRF_ENABLED=False)
        with app.app_context():
            owner = users.create_user(
                email="owner@team.test", name="Owner", password="owner password 1", is_admin=True
            )
            account_id = add_dovecot_account(app, owner, server, email, mail_user.password)
            client = app.test_client()
            response = client.post(
                "/login", data={"email": "owner@team.test", "password": "owner password 1"}
            )
            assert response.status_code == 302, response.status_code
            print(f"load average before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            results = {}
            for mode, deliveries, config in (
                ("polling", args.baseline_deliveries, {"IDLE_ENABLED": False}),
                ("idle", args.deliveries, {"IDLE_ENABLED": True, "IDLE_REFRESH_SECONDS": 1}),
            ):
                worker = start_worker(
                    app, database_url, SYNC_INTERVAL_SECONDS=args.poll_interval, **config
                )
                results[mode] = measure(
                    client,
                    server,
                    email,
                    account_id,
                    mode=mode,
                    deliveries=deliveries,
                    gap=args.poll_interval / 2 if mode == "polling" else 1.0,
                    first=1 if mode == "polling" else 1000,
                )
                stop_worker(worker)
                worker = None
            (poll50, poll95), (idle50, idle95) = results["polling"], results["idle"]
            print(
                f"IDLE vs polling every {args.poll_interval} s: p50 {poll50 / idle50:.0f}x, "
                f"p95 {poll95 / idle95:.0f}x faster to the row"
            )
            print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        if worker is not None:
            stop_worker(worker)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
