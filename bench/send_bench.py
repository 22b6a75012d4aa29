"""Send benchmark: queued mail through Threadline's worker path vs a bare smtplib loop.

Run from the repository root:  python bench/send_bench.py [--mails 200] [--postgres]
Starts a local Dovecot and an aiosmtpd (STARTTLS + AUTH, as a submission server on 587
would be), then in the same run:
  (1) bare smtplib, one connection per mail (connect, STARTTLS, AUTH, send, QUIT);
  (2) bare smtplib, one connection for all mails;
  (3) Threadline: the mails queued with services.outbox.queue_send, then the worker's send
      tick (jobs.send_due_mail) until all are sent; this builds each MIME message, sends it,
      appends the Sent copy to Dovecot and stores it into its conversation.
Prints each figure and the ratios; copy the output into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import ssl
import sys
import tempfile
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.databases import add_database_arguments, bench_app, run_on_database  # noqa: E402
from bench.sync_bench import add_dovecot_account  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402
from tests.servers.smtp import SMTPServer  # noqa: E402

BODY = (
    "<p>Hello {n},</p><p>thanks for the call today. As promised, here is the summary of "
    "the proposal with the prices we discussed, and the next steps for the rollout.</p>"
    "<ul><li>Licences: 40 seats</li><li>Training: two half days</li></ul><p>Best regards</p>"
)


def bare_message(sender: str, n: int) -> bytes:
    message = EmailMessage()
    message["From"], message["To"] = sender, f"customer{n}@customer.test"
    message["Subject"] = f"Proposal {n}"
    message.set_content(f"Hello {n}, thanks for the call today.")
    message.add_alternative(BODY.format(n=n), subtype="html")
    return message.as_bytes()


def bare_loop(server: SMTPServer, context, sender: str, password: str, count: int, *, reuse):
    started = time.perf_counter()
    client = None
    for n in range(count):
        if client is None:
            client = smtplib.SMTP(server.host, server.port)
            client.starttls(context=context)
            client.login(sender, password)
        client.sendmail(sender, [f"customer{n}@customer.test"], bare_message(sender, n))
        if not reuse:
            client.quit()
            client = None
    if client is not None:
        client.quit()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mails", type=int, default=200)
    parser.add_argument("--profile", help="write a cProfile of the worker path to this file")
    parser.add_argument("--rounds", type=int, default=100)  # compose page samples
    add_database_arguments(parser)
    run_on_database(parser.parse_args(), run)


def run(args) -> None:
    dovecot = DovecotServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="threadline-send-bench-"))
    email_address, password = "bench@mail.test", "bench-password"
    dovecot.add_user(email_address, password)
    smtp = SMTPServer(
        cert_file=dovecot.certs.cert_file,
        key_file=dovecot.certs.key_file,
        username=email_address,
        password=password,
    ).start()
    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    try:
        print(f"load average before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        per_mail = bare_loop(smtp, context, email_address, password, args.mails, reuse=False)
        print(
            f"(1) bare smtplib, a connection per mail: {args.mails} in {per_mail:.2f} s "
            f"= {args.mails / per_mail:.0f} mails/s"
        )
        reused = bare_loop(smtp, context, email_address, password, args.mails, reuse=True)
        print(
            f"(2) bare smtplib, one connection: {args.mails} in {reused:.2f} s "
            f"= {args.mails / reused:.0f} mails/s"
        )
        smtp.messages.clear()

        import jobs
        from extensions import db
        from models import OUTGOING_SENT, Message, OutgoingMail
        from services import outbox, users

        app = bench_app(
            workdir, args.database_url, DAILY_SEND_LIMIT=args.mails + 1, WTF_CSRF_ENABLED=False
        )
        with app.app_context():
            owner = users.create_user(
                email="owner@team.test", name="Owner Name", password="owner password 1"
            )
            account_id = add_dovecot_account(
                app,
                owner,
                dovecot,
                email_address,
                password,
                smtp_host=smtp.host,
                smtp_port=smtp.port,
                smtp_security="starttls",
            )
            owner_id = owner.id
        jobs.run_account_sync(app, account_id)  # learns the Sent folder
        with app.app_context():
            owner = db.session.get(type(owner), owner_id)
            queued_started = time.perf_counter()
            for n in range(args.mails):
                mail = OutgoingMail(
                    user_id=owner.id,
                    account_id=account_id,
                    to=[[f"Customer {n}", f"customer{n}@customer.test"]],
                    cc=[],
                    bcc=[],
                    subject=f"Proposal {n}",
                    body_html=BODY.format(n=n),
                    references=[],
                )
                db.session.add(mail)
                db.session.commit()
                outbox.queue_send(owner, mail)
            queue_seconds = time.perf_counter() - queued_started
            db.session.remove()
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started = time.perf_counter()
        worker_started = datetime.now(UTC)
        sent = 0
        while sent < args.mails:
            results = jobs.send_due_mail(app, started_at=worker_started)
            if not results:
                break
            sent += sum(1 for state in results.values() if state == OUTGOING_SENT)
        worker_seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        with app.app_context():
            stored = db.session.scalar(
                db.select(db.func.count())
                .select_from(Message)
                .where(Message.account_id == account_id)
            )
        in_sent = len(dovecot.uids(email_address, "Sent"))
        print(
            f"(3) Threadline worker path: {sent} sent in {worker_seconds:.2f} s "
            f"= {sent / worker_seconds:.0f} mails/s (queueing took {queue_seconds:.2f} s); "
            f"received {len(smtp.messages)}, Sent copies {in_sent}, stored {stored}"
        )
        print(
            f"ratio (3)/(1): {per_mail / worker_seconds:.2f}x; "
            f"ratio (3)/(2): {reused / worker_seconds:.2f}x (rate of Threadline / rate of bare)"
        )
        compose_pages(app, account_id, args.rounds)
    finally:
        smtp.stop()
        dovecot.stop()


def compose_pages(app, account_id: int, rounds: int) -> None:
    """Server time of the compose page (new, prefilled, a reply to a sent mail) and of the
    recipient suggestions, over the mailbox the run just filled."""
    from extensions import db
    from models import Message

    with app.app_context():
        reply_to = db.session.scalar(
            db.select(Message.id).where(Message.account_id == account_id).limit(1)
        )
    client = app.test_client()
    response = client.post(
        "/login", data={"email": "owner@team.test", "password": "owner password 1"}
    )
    assert response.status_code == 302, response.status_code
    pages = {
        "new mail": "/mail/compose",
        "prefilled from an address": "/mail/compose?to=customer7@customer.test",
        "reply to a sent mail": f"/mail/compose?reply={reply_to}&kind=reply_all",
        "recipient suggestions 'cust'": "/mail/compose/recipients?q=cust",
    }
    print(f"\ncompose pages, {rounds} samples each (server time through the test client):")
    for label, url in pages.items():
        for _ in range(5):  # warm templates and caches
            assert client.get(url).status_code == 200, url
        samples = []
        for _ in range(rounds):
            began = time.perf_counter()
            client.get(url)
            samples.append((time.perf_counter() - began) * 1000)
        samples.sort()
        p50, p95 = samples[len(samples) // 2], samples[int(len(samples) * 0.95) - 1]
        print(f"  {label}: p50 {p50:.1f} ms, p95 {p95:.1f} ms")


if __name__ == "__main__":
    main()
