"""Email accounts: tested connect, encrypted passwords, re-auth, status, owner-only access, CLI.

Runs against the real Dovecot fixture (private CA, SSL and STARTTLS listeners).
"""

from __future__ import annotations

import html
import io
import logging
import re
from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text

import jobs
from extensions import db
from mailsync.providers import get_provider, provider_for_email
from models import (
    SYNC_NEEDS_REAUTH,
    SYNC_PAUSED,
    SYNC_RUNNING,
    Job,
    MailAccount,
    MailFolder,
    Message,
    MessageLocation,
    SyncRun,
    Thread,
    User,
)
from services import accounts as account_service
from services.credentials import load_keys, secret_box
from services.errors import ValidationError
from tests.mail_fixtures import build_message
from tests.queue_helpers import run_pending_jobs
from tests.servers.dovecot import make_certificates
from tests.sync_helpers import raw_message

pytestmark = pytest.mark.imap


@pytest.fixture(autouse=True)
def any_port(app):
    """Dovecot listens on random ports; production allows only 993/143."""
    app.config["MAIL_ALLOWED_PORTS"] = None


def server_fields(dovecot, mail_user, **overrides) -> dict:
    fields = {
        "provider": "other",
        "email_address": mail_user.email,
        "username": "",
        "password": mail_user.password,
        "imap_host": dovecot.host,
        "imap_port": str(dovecot.ssl_port),
        "imap_security": "ssl",
        "smtp_host": "",
        "smtp_port": "",
        "smtp_security": "ssl",
        "ca_cert": (io.BytesIO(dovecot.ca_file.read_bytes()), "ca.pem"),
    }
    fields.update(overrides)
    return fields


def post_test(client, fields: dict):
    return client.post(
        "/settings/accounts/new/test", data=fields, content_type="multipart/form-data"
    )


def hidden_inputs(body: str) -> dict[str, str]:
    pairs = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', body)
    return {name: html.unescape(value) for name, value in pairs}


@pytest.fixture
def make_account(app, dovecot):
    def factory(user, mail_user, **overrides) -> MailAccount:
        values = dict(
            email_address=mail_user.email,
            provider="other",
            username=mail_user.email,
            password=mail_user.password,
            imap_host=dovecot.host,
            imap_port=dovecot.ssl_port,
            imap_security="ssl",
            ca_cert_pem=dovecot.ca_file.read_text(),
        )
        values.update(overrides)
        return account_service.create_account(user, app=app, **values)

    return factory


def account_count() -> int:
    return db.session.scalar(db.select(db.func.count()).select_from(MailAccount))


# --------------------------------------------------------------------------- adding


def test_two_step_add_with_ca_file_saves_tested_account(app, dovecot, mail_user, make_user, login):
    user = make_user()
    client = login(user)

    step_one = post_test(client, server_fields(dovecot, mail_user))
    body = step_one.get_data(as_text=True)
    assert step_one.status_code == 200, body
    assert "Choose folders" in body and "Connected to 127.0.0.1" in body
    assert 'value="INBOX"' in body
    assert "Sent is always synced" in body
    assert mail_user.password not in body  # only a sealed token travels to step 2

    hidden = hidden_inputs(body)
    saved = client.post(
        "/settings/accounts/",
        data={**hidden, "folder_mode": "chosen", "chosen_folders": ["INBOX"], "since": "6m"},
    )
    assert saved.status_code == 303, saved.get_data(as_text=True)
    account = db.session.scalar(db.select(MailAccount))
    assert saved.headers["Location"] == f"/settings/accounts/{account.id}"
    assert account.user_id == user.id
    assert account.ca_cert_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert account.folder_mode == "chosen"
    assert account.chosen_folders == ["INBOX", "Sent"]  # Sent is always synced
    assert account.since == "6m"
    assert account.sync_state == SYNC_RUNNING

    status = client.get(saved.headers["Location"])
    assert status.status_code == 200
    assert mail_user.email in status.get_data(as_text=True)
    assert "Syncing" in status.get_data(as_text=True)


def test_wrong_password_is_422_in_plain_words_and_saves_nothing(
    app, dovecot, mail_user, make_user, login, make_account
):
    user = make_user()
    response = post_test(login(user), server_fields(dovecot, mail_user, password="wrong"))
    assert response.status_code == 422
    assert "username or password" in response.get_data(as_text=True)

    with pytest.raises(ValidationError) as caught:
        make_account(user, mail_user, password="wrong")
    assert "username or password" in caught.value.errors["password"]
    assert account_count() == 0


def test_untrusted_certificate_names_the_certificate(dovecot, mail_user, make_user, login):
    fields = server_fields(dovecot, mail_user)
    del fields["ca_cert"]
    response = post_test(login(make_user()), fields)
    body = html.unescape(response.get_data(as_text=True))
    assert response.status_code == 422
    assert "is not trusted" in body
    assert "Threadline Test CA" in body
    assert account_count() == 0


def test_a_wrong_uploaded_ca_is_named_as_such(dovecot, mail_user, make_user, login, tmp_path):
    other_ca = make_certificates(tmp_path).ca_file  # a CA that did not sign Dovecot's certificate
    fields = server_fields(
        dovecot, mail_user, ca_cert=(io.BytesIO(other_ca.read_bytes()), "other-ca.pem")
    )
    response = post_test(login(make_user()), fields)
    body = html.unescape(response.get_data(as_text=True))
    assert response.status_code == 422
    assert "The CA certificate you uploaded did not sign" in body
    assert "upload that CA certificate" not in body
    assert account_count() == 0


def test_invalid_ca_file_is_a_field_error(dovecot, mail_user, make_user, login):
    fields = server_fields(dovecot, mail_user, ca_cert=(io.BytesIO(b"not a cert"), "ca.pem"))
    response = post_test(login(make_user()), fields)
    assert response.status_code == 422
    assert "not a PEM certificate" in response.get_data(as_text=True)


def test_non_mail_port_is_refused(app, dovecot, mail_user, make_user, login):
    app.config["MAIL_ALLOWED_PORTS"] = (993, 143)
    client = login(make_user())
    for port in (dovecot.ssl_port, 22):
        response = post_test(client, server_fields(dovecot, mail_user, imap_port=str(port)))
        assert response.status_code == 422
        body = response.get_data(as_text=True)
        assert f"Port {port} is not an IMAP port" in body
        assert "THREADLINE_MAIL_ALLOWED_PORTS" in body  # the admin learns which setting allows it


def test_starttls_account(dovecot, mail_user, make_user, make_account):
    account = make_account(
        make_user(), mail_user, imap_port=dovecot.plain_port, imap_security="starttls"
    )
    assert account.imap_security == "starttls"


def test_duplicate_address_refused(dovecot, mail_user, make_user, make_account):
    user = make_user()
    make_account(user, mail_user)
    with pytest.raises(ValidationError) as caught:
        make_account(user, mail_user)
    assert "already connected" in caught.value.errors["email_address"]


# --------------------------------------------------------------------------- secrets


def test_password_encrypted_at_rest_and_never_rendered_or_logged(
    app, dovecot, mail_user, make_user, login, caplog
):
    caplog.set_level(logging.DEBUG)
    user = make_user()
    client = login(user)
    step_one = post_test(client, server_fields(dovecot, mail_user))
    saved = client.post(
        "/settings/accounts/",
        data={**hidden_inputs(step_one.get_data(as_text=True)), "folder_mode": "all"},
    )
    assert saved.status_code == 303
    account = db.session.scalar(db.select(MailAccount))

    stored = db.session.execute(text("SELECT password_encrypted FROM mail_account")).scalar()
    assert mail_user.password.encode() not in stored
    assert bytes(stored).startswith(b"gAAAAA")  # a Fernet token
    assert secret_box(app).decrypt(stored) == mail_user.password

    pages = [
        "/settings/accounts/",
        f"/settings/accounts/{account.id}",
        f"/settings/accounts/{account.id}/reauth",
        f"/settings/accounts/{account.id}/folders",
        f"/settings/accounts/{account.id}/remove",
        "/mail/",
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        assert mail_user.password not in response.get_data(as_text=True), url
    assert mail_user.password not in caplog.text
    assert mail_user.password not in app.extensions.get("threadline_secret_box").__dict__.values()


def test_corrupted_token_asks_for_the_password_again(
    app, dovecot, mail_user, make_user, login, make_account
):
    user = make_user()
    account = make_account(user, mail_user)
    token = bytearray(account.password_encrypted)
    token[20] ^= 0x01
    account.password_encrypted = bytes(token)
    db.session.commit()

    response = login(user).get(f"/settings/accounts/{account.id}/folders")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Enter the password again" in body
    assert f"/settings/accounts/{account.id}/reauth" in body


def test_full_sync_logs_no_password_at_debug(
    app, dovecot, mail_user, make_user, make_account, caplog
):
    caplog.set_level(logging.DEBUG)  # every logger, imapclient's IMAP conversation too
    for n in range(1, 4):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email))
    account = make_account(make_user(), mail_user)
    assert jobs.run_account_sync(app, account.id).ok
    assert "LOGIN" in caplog.text  # the conversation was logged, login command included
    assert mail_user.password not in caplog.text


def test_reencrypting_mail_passwords_rotates_the_key(
    app, dovecot, mail_user, make_user, make_account, runner
):
    account = make_account(make_user(), mail_user)
    (old_key,) = load_keys(app.instance_path)
    new_key = Fernet.generate_key()

    def use_keys(*keys: bytes) -> None:
        app.config["MAIL_KEYS"] = ",".join(key.decode() for key in keys)
        app.extensions.pop("threadline_secret_box", None)

    use_keys(new_key, old_key)  # the operator puts the new key first
    result = runner.invoke(args=["reencrypt-mail-passwords"])
    assert result.exit_code == 0, result.output
    assert "1 mail password" in result.output
    use_keys(new_key)  # and then drops the old one
    db.session.expire_all()
    stored = db.session.get(MailAccount, account.id).password_encrypted
    assert secret_box(app).decrypt(stored) == mail_user.password
    assert jobs.run_account_sync(app, account.id).ok


def test_reencrypting_skips_and_names_unreadable_passwords(app, make_user, make_stored_account):
    readable = make_stored_account(make_user())
    readable.password_encrypted = secret_box(app).encrypt("mail-secret")
    broken = make_stored_account(make_user())  # "unused": no key can read it
    db.session.commit()
    result = account_service.reencrypt_mail_passwords(app)
    assert result.reencrypted == 1 and result.unreadable_account_ids == [broken.id]
    assert secret_box(app).decrypt(readable.password_encrypted) == "mail-secret"
    assert broken.password_encrypted == b"unused"


# --------------------------------------------------------------------------- re-auth


def test_reauth_flow_resumes_with_settings_kept(
    app, dovecot, mail_user, make_user, login, make_account
):
    user = make_user()
    account = make_account(user, mail_user, folder_mode="chosen", chosen_folders=["INBOX"])
    account.sync_state = SYNC_NEEDS_REAUTH
    account.consecutive_failures = 4
    account.backoff_until = datetime(2030, 1, 1, tzinfo=UTC)
    account.last_error = "The server rejected the username or password."
    db.session.commit()
    client = login(user)

    page = client.get("/settings/").get_data(as_text=True)
    assert 'class="banner"' in page
    assert f"/settings/accounts/{account.id}/reauth" in page
    status = client.get(f"/settings/accounts/{account.id}").get_data(as_text=True)
    assert "Needs re-authentication" in status and "Re-enter it to resume" in status

    dovecot.set_password(mail_user.email, "new-password-2")
    old = client.post(f"/settings/accounts/{account.id}/reauth", data={"password": "wrong"})
    assert old.status_code == 422
    assert "username or password" in old.get_data(as_text=True)

    new = client.post(
        f"/settings/accounts/{account.id}/reauth", data={"password": "new-password-2"}
    )
    assert new.status_code == 303
    db.session.expire_all()
    account = db.session.get(MailAccount, account.id)
    assert account.sync_state == SYNC_RUNNING
    assert account.consecutive_failures == 0 and account.backoff_until is None
    assert account.chosen_folders == ["INBOX", "Sent"]
    assert secret_box(app).decrypt(account.password_encrypted) == "new-password-2"
    assert 'class="banner"' not in client.get("/settings/").get_data(as_text=True)


# --------------------------------------------------------------------------- lifecycle


def test_pause_resume_and_sync_now_queue_a_pass_for_the_worker(
    app, dovecot, mail_user, make_user, login, make_account
):
    user = make_user()
    account = make_account(user, mail_user)
    dovecot.deliver(mail_user.email, build_message(subject="Waiting for sync now"))
    client = login(user)

    assert client.post(f"/settings/accounts/{account.id}/pause").status_code == 303
    db.session.expire_all()
    assert db.session.get(MailAccount, account.id).sync_state == SYNC_PAUSED
    assert "Paused" in client.get(f"/settings/accounts/{account.id}").get_data(as_text=True)
    assert client.post(f"/settings/accounts/{account.id}/resume").status_code == 303
    db.session.expire_all()
    assert db.session.get(MailAccount, account.id).sync_state == SYNC_RUNNING
    assert client.post(f"/settings/accounts/{account.id}/sync").status_code == 303
    # Resume and Sync now asked for one pass between them: the request ran no IMAP.
    (job,) = db.session.scalars(select(Job)).all()
    assert (job.kind, job.state, job.payload) == ("account.sync", "queued", {"all_folders": True})
    page = client.get(f"/settings/accounts/{account.id}").get_data(as_text=True)
    assert "Sync requested; it starts in a moment." in page
    assert db.session.scalar(select(Message.id)) is None
    assert run_pending_jobs(app) == 1
    db.session.expire_all()
    assert db.session.get(Job, job.id).state == "done"
    assert db.session.scalars(select(Message.subject)).all() == ["Waiting for sync now"]
    progress = client.get(f"/settings/accounts/{account.id}/progress").get_data(as_text=True)
    assert "Sync requested" not in progress and "every 2s" not in progress


def add_message(account: MailAccount, folder: MailFolder, uid: int, subject: str) -> Message:
    date = datetime(2026, 11, uid % 28 + 1, tzinfo=UTC)
    thread = Thread(
        account_id=account.id,
        subject=subject,
        last_date=date,
        message_count=1,
        in_inbox=folder.role == "inbox",
    )
    db.session.add(thread)
    db.session.flush()
    message = Message(
        account_id=account.id,
        thread_id=thread.id,
        dedup_key=f"{account.id}-{uid}",
        subject=subject,
        from_address="sender@example.com",
        date=datetime(2026, 11, uid % 28 + 1, tzinfo=UTC),
    )
    message.locations.append(MessageLocation(folder_id=folder.id, uid=uid))
    db.session.add(message)
    db.session.commit()
    return message


def add_folder(account: MailAccount, name: str, role: str | None, **fields) -> MailFolder:
    folder = MailFolder(account_id=account.id, name=name, role=role, **fields)
    db.session.add(folder)
    db.session.commit()
    return folder


def test_status_page_counts_folders_and_lists_runs(
    dovecot, mail_user, make_user, login, make_account
):
    user = make_user()
    account = make_account(user, mail_user)
    inbox = add_folder(account, "INBOX", "inbox", server_message_count=3, backfill_total=10)
    add_folder(account, "Sent", "sent", server_message_count=0)
    add_message(account, inbox, 1, "one")
    add_message(account, inbox, 2, "two").deleted_at = datetime.now(UTC)
    inbox.backfill_done = 4
    db.session.add(SyncRun(account_id=account.id, new_count=7, error=None))
    db.session.commit()

    status = account_service.account_status(account)
    assert status["state"] == "syncing"
    assert status["progress"].percent == 40
    assert [f["name"] for f in status["folders"]] == ["INBOX", "Sent"]
    assert status["folders"][0]["server_count"] == 3
    assert status["folders"][0]["stored_count"] == 1  # the soft-deleted one is not counted
    assert status["runs"][0].new_count == 7

    client = login(user)
    page = client.get(f"/settings/accounts/{account.id}").get_data(as_text=True)
    assert 'hx-trigger="every 2s"' in page and "4 of 10 messages" in page
    inbox.backfill_done = 10
    account.last_success_at = datetime.now(UTC)
    db.session.commit()
    fragment = client.get(
        f"/settings/accounts/{account.id}/progress",
        headers={"HX-Request": "true", "HX-Target": "sync-progress"},
    ).get_data(as_text=True)
    assert "every 2s" not in fragment  # polling stops when done
    assert "All 10 messages" in fragment


def test_remove_keeping_mail_then_deleting(dovecot, mail_user, make_user, login, make_account):
    user = make_user()
    account = make_account(user, mail_user)
    inbox = add_folder(account, "INBOX", "inbox")
    message_id = add_message(account, inbox, 1, "kept subject").id
    client = login(user)

    kept = client.post(f"/settings/accounts/{account.id}/remove", data={"keep_mail": "1"})
    assert kept.status_code == 303
    db.session.expire_all()
    account = db.session.get(MailAccount, account.id)
    assert account.removed_at is not None and account.password_encrypted == b""
    assert "kept subject" in client.get("/mail/").get_data(as_text=True)

    revived = make_account(user, mail_user)  # re-adding revives the same account
    assert revived.id == account.id and revived.removed_at is None

    gone = client.post(f"/settings/accounts/{account.id}/remove", data={"keep_mail": "0"})
    assert gone.status_code == 303
    db.session.expire_all()
    assert account_count() == 0
    assert db.session.get(Message, message_id) is None


# --------------------------------------------------------------------------- access


def test_other_users_accounts_are_404_on_every_route(
    app, dovecot, mail_user, make_user, login, make_account
):
    owner, other = make_user(), make_user(is_admin=True)
    account = make_account(owner, mail_user)
    client = login(other)
    rules = [
        rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("accounts.") and "account_id" in rule.arguments
    ]
    assert len({rule.endpoint for rule in rules}) == 21
    for rule in rules:
        url = rule.build({"account_id": account.id, "address_id": 1, "run_id": 1, "folder_id": 1})[
            1
        ]
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = client.open(url, method=method, data={"password": mail_user.password})
            assert response.status_code == 404, (rule.endpoint, method)
    db.session.expire_all()
    assert db.session.get(MailAccount, account.id).sync_state == SYNC_RUNNING


# --------------------------------------------------------------------------- limits, presets


def test_connection_tests_are_rate_limited(app, dovecot, mail_user, make_user, login):
    app.config["MAIL_CONNECTION_TESTS"] = 2
    client = login(make_user())
    fields = lambda: server_fields(dovecot, mail_user, imap_host="no-such-host.invalid")  # noqa: E731
    assert post_test(client, fields()).status_code == 422
    assert post_test(client, fields()).status_code == 422
    limited = post_test(client, fields())
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert "Too many connection tests" in limited.get_data(as_text=True)


def test_connection_test_limit_survives_a_new_app_on_the_same_database(
    app, tmp_path, make_user, monkeypatch
):
    """The count lives in the database: another worker or a restart does not reset it."""
    from app import create_app

    monkeypatch.setattr(account_service, "test_connection", lambda settings, **_: [])
    user_id = make_user().id
    fields = dict(
        provider="other",
        email_address="me@example.test",
        username="",
        password="secret",
        imap_host="imap.example.test",
        imap_port=993,
        imap_security="ssl",
    )

    def check(some_app) -> None:
        some_app.config["MAIL_CONNECTION_TESTS"] = 2
        with some_app.app_context():
            user = db.session.get(User, user_id)
            account_service.check_connection(user, app=some_app, **fields)

    check(app)
    check(app)
    restarted = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
            "SECRET_KEY": app.config["SECRET_KEY"],
            "SCHEDULER_ENABLED": False,
            "INSTANCE_PATH": str(tmp_path / "i2"),
        }
    )
    with pytest.raises(account_service.RateLimited) as limited:
        check(restarted)
    assert 0 < limited.value.retry_after <= 600
    with restarted.app_context():
        db.engine.dispose()


def test_provider_presets_prefill_and_refuse_oauth_only(app, dovecot, mail_user, make_user, login):
    client = login(make_user())
    fragment = client.get(
        "/settings/accounts/new/server-fields?provider=gmail",
        headers={"HX-Request": "true", "HX-Target": "server-fields"},
    ).get_data(as_text=True)
    assert 'value="imap.gmail.com"' in fragment and 'value="993"' in fragment
    assert "<html" not in fragment
    assert 'value="imap.gmail.com"' in client.get("/settings/accounts/new?provider=gmail").text
    no_js = client.post(
        "/settings/accounts/new/preset", data={"provider": "yahoo", "email_address": "a@b.c"}
    )
    assert 'value="imap.mail.yahoo.com"' in no_js.text
    assert "authorization code" in client.get("/settings/accounts/new?provider=qq").text

    refused = post_test(client, server_fields(dovecot, mail_user, provider="office365"))
    assert refused.status_code == 422
    assert "OAuth2" in refused.text and "Sign in with Microsoft" in refused.text

    assert provider_for_email("someone@QQ.com").key == "qq"
    assert provider_for_email("a@hotmail.com").oauth_only
    assert provider_for_email("a@example.org").key == "other"
    assert get_provider("bluehost").settings_for("a@example.org")["imap_host"] == (
        "mail.example.org"
    )


# --------------------------------------------------------------------------- CLI


def test_cli_add_account_success_and_failure(app, runner, dovecot, mail_user, make_user):
    user = make_user()
    args = [
        "add-account", user.email, "--imap-host", dovecot.host,
        "--imap-port", str(dovecot.ssl_port), "--security", "ssl",
        "--username", mail_user.email, "--ca-file", str(dovecot.ca_file),
        "--folders", "INBOX", "--since", "1y",
    ]  # fmt: skip
    failed = runner.invoke(args=args, env={"THREADLINE_MAIL_PASSWORD": "wrong"})
    assert failed.exit_code == 1
    assert "username or password" in failed.output
    assert account_count() == 0

    ok = runner.invoke(args=args, env={"THREADLINE_MAIL_PASSWORD": mail_user.password})
    assert ok.exit_code == 0, ok.output
    account = db.session.scalar(db.select(MailAccount))
    # The command starts no sync it would cut off on exit; it says how the mail arrives.
    assert f"flask --app app sync --account {account.id}" in ok.output
    assert db.session.scalar(db.select(func.count()).select_from(SyncRun)) == 0
    assert account.chosen_folders == ["INBOX", "Sent"] and account.since == "1y"
