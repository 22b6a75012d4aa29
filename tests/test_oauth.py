"""OAuth2 mailboxes end to end, with no outside service: a local authorization server
(tests/servers/oauth.py), a Dovecot whose oauth2 passdb checks tokens at its introspection
endpoint, and an aiosmtpd that accepts AUTH XOAUTH2 the same way.

The sign-in runs browser-less: the Flask test client posts "Sign in with Google", the
authorization URL is fetched from the local server (which auto-approves its user), and the
redirect back is handed to the test client.
"""

from __future__ import annotations

import itertools
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import select

import jobs
from extensions import db
from mailsync import send, smtp
from mailsync.imap import AUTH_FAILED, MailConnectionError
from models import SYNC_NEEDS_REAUTH, SYNC_RUNNING, MailAccount, OAuthClient, utcnow
from services import oauth
from services.credentials import secret_box
from tests.servers.dovecot import DovecotServer
from tests.servers.oauth import OAuthServer
from tests.servers.smtp import SMTPServer
from tests.sync_helpers import message_count, raw_message

CALLBACK = "http://localhost/settings/accounts/oauth/callback"
_boxes = itertools.count(1)


@pytest.fixture(scope="module")
def oauth_server():
    server = OAuthServer().start()
    server.client.redirect_uris.append(CALLBACK)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oauth_dovecot(oauth_server):
    """A Dovecot that takes XOAUTH2 / OAUTHBEARER tokens checked by the local server."""
    server = DovecotServer(oauth2_introspection_url=oauth_server.introspection_url()).start()
    yield server
    server.stop()


@pytest.fixture
def mailbox(oauth_server, oauth_dovecot):
    """A fresh mail user, the one the authorization server approves; short-lived tokens off."""
    user = oauth_dovecot.add_user(f"oauth{next(_boxes)}@mail.test")
    oauth_server.email = user.email
    oauth_server.token_lifetime = 3600
    return user


@pytest.fixture
def smtp_oauth(oauth_server, oauth_dovecot):
    server = SMTPServer(
        cert_file=oauth_dovecot.certs.cert_file,
        key_file=oauth_dovecot.certs.key_file,
        username="nobody",
        password="no password works",
        implicit_tls=True,
        oauth_introspect=oauth_server.introspect,
    ).start()
    yield server
    server.stop()


@pytest.fixture
def google(app, oauth_server, oauth_dovecot, smtp_oauth):
    """The app with Google's endpoints and mail servers pointed at the local ones, and the
    admin's client registration stored."""
    app.config["OAUTH_ENDPOINTS"] = {"google": oauth_server.endpoints()}
    app.config["OAUTH_MAIL_SERVERS"] = {
        "google": {
            "imap_host": oauth_dovecot.host,
            "imap_port": oauth_dovecot.ssl_port,
            "imap_security": "ssl",
            "smtp_host": smtp_oauth.host,
            "smtp_port": smtp_oauth.port,
            "smtp_security": "ssl",
            "ca_cert_pem": oauth_dovecot.ca_file.read_text(),
        }
    }
    app.config["MAIL_ALLOWED_PORTS"] = None
    app.config["SMTP_ALLOWED_PORTS"] = None
    register_client(app, oauth_server, "google")
    return app


@pytest.fixture
def microsoft(app, google, oauth_server):
    """As `google`, for "Sign in with Microsoft" (the same local servers stand in)."""
    app.config["OAUTH_ENDPOINTS"]["microsoft"] = oauth_server.endpoints()
    app.config["OAUTH_MAIL_SERVERS"]["microsoft"] = app.config["OAUTH_MAIL_SERVERS"]["google"]
    register_client(app, oauth_server, "microsoft")
    return app


def register_client(app, oauth_server, key: str) -> None:
    """What the admin does on Admin > Mail sign-in, with the local server's client."""
    client = oauth_server.client
    oauth.save_client(app, key, client_id=client.client_id, client_secret=client.client_secret)


def sign_in(client, path: str = "/settings/accounts/oauth/google"):
    """Press a sign-in button, let the provider approve, and follow it back to Threadline."""
    started = client.post(path)
    assert started.status_code == 303, started.data
    authorize = started.headers["Location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["state"][0]
    approved = requests.get(authorize, allow_redirects=False, timeout=10)
    assert approved.status_code == 302, approved.text
    back = urlsplit(approved.headers["Location"])
    assert back.path == "/settings/accounts/oauth/callback"
    return client.get(f"{back.path}?{back.query}")


def account_of(user) -> MailAccount:
    db.session.expire_all()
    return db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id))


# --------------------------------------------------------------------------- admin settings


def test_admin_stores_the_client_secret_encrypted_and_shows_the_redirect_url(
    app, admin_client, make_user, login
):
    page = admin_client.get("/admin/mail-sign-in")
    assert page.status_code == 200
    assert CALLBACK.encode() in page.data
    assert b"Google" in page.data and b"Microsoft" in page.data

    response = admin_client.post(
        "/admin/mail-sign-in/google",
        data={"google_client_id": "id-123.apps", "google_client_secret": "s3cret-value"},
    )
    assert response.status_code == 303
    row = db.session.scalar(select(OAuthClient).where(OAuthClient.provider == "google"))
    assert row.client_id == "id-123.apps"
    assert b"s3cret-value" not in row.client_secret_encrypted
    assert secret_box(app).decrypt(row.client_secret_encrypted) == "s3cret-value"
    page = admin_client.get("/admin/mail-sign-in")
    assert b"id-123.apps" in page.data and b"s3cret-value" not in page.data

    # A blank secret keeps the stored one; a new client without a secret is refused.
    admin_client.post(
        "/admin/mail-sign-in/google",
        data={"google_client_id": "id-456.apps", "google_client_secret": ""},
    )
    db.session.expire_all()
    row = db.session.scalar(select(OAuthClient).where(OAuthClient.provider == "google"))
    assert row.client_id == "id-456.apps"
    assert secret_box(app).decrypt(row.client_secret_encrypted) == "s3cret-value"
    refused = admin_client.post(
        "/admin/mail-sign-in/microsoft", data={"microsoft_client_id": "ms-id"}
    )
    assert refused.status_code == 422 and b"Enter the client secret." in refused.data

    member = login(make_user())
    assert member.get("/admin/mail-sign-in").status_code == 404
    assert (
        member.post(
            "/admin/mail-sign-in/google",
            data={"google_client_id": "evil", "google_client_secret": "x"},
        ).status_code
        == 404
    )


def test_sign_in_buttons_show_only_for_providers_an_admin_set_up(app, make_user, login):
    client = login(make_user())
    assert b"Sign in with Google" not in client.get("/settings/accounts/new").data
    oauth.save_client(app, "google", client_id="cid", client_secret="secret")
    page = client.get("/settings/accounts/new")
    assert b"Sign in with Google" in page.data and b"Sign in with Microsoft" not in page.data
    # The hint names the mailboxes the offered sign-in serves, not the ones it does not.
    assert b"Gmail and Google Workspace: sign in at the provider" in page.data
    assert b"Microsoft 365 and Outlook.com" not in page.data
    oauth.save_client(app, "microsoft", client_id="mid", client_secret="secret")
    both = client.get("/settings/accounts/new").data
    assert b"Gmail and Google Workspace; Microsoft 365 and Outlook.com: sign in" in both
    # The form's redirect to Google's page is allowed, and nothing else is widened.
    policy = page.headers["Content-Security-Policy"]
    assert "form-action 'self' https://accounts.google.com;" in policy
    assert "script-src 'self';" in policy


def test_a_forms_sign_in_needs_csrf(app, google, make_user, login):
    client = login(make_user())
    assert client.post("/settings/accounts/oauth/google", csrf=False).status_code == 400


# --------------------------------------------------------------------------- connect + sync


def test_sign_in_with_google_connects_the_mailbox_and_sync_uses_the_token(
    app, google, oauth_server, oauth_dovecot, mailbox, make_user, login
):
    oauth_dovecot.deliver(mailbox.email, raw_message(1, to=mailbox.email))
    user = make_user()
    client = login(user)
    response = sign_in(client)
    assert response.status_code == 303, response.data
    account = account_of(user)
    # Step 2, as after a password sign-in: folders and history, while the newest mail arrives.
    assert response.headers["Location"].endswith(
        f"/settings/accounts/{account.id}/folders?connected=1"
    )
    step_two = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "is connected and its newest mail is coming in" in step_two
    assert 'aria-current="step">Choose folders' in step_two and "INBOX" in step_two
    assert account.email_address == mailbox.email  # from the id_token
    assert account.auth_type == "xoauth2" and account.provider == "gmail"
    assert account.sync_state == SYNC_RUNNING
    access = secret_box(app).decrypt(account.password_encrypted)
    assert access in oauth_server.tokens
    refresh = secret_box(app).decrypt(account.refresh_token_encrypted)
    assert refresh in oauth_server.grants
    assert refresh.encode() not in account.refresh_token_encrypted
    assert account.token_expires_at > utcnow() + timedelta(minutes=50)

    assert jobs.run_account_sync(app, account.id).ok
    assert message_count(account.id) == 1
    assert f"user=<{mailbox.email}>, method=XOAUTH2" in oauth_dovecot.log()


def test_sign_in_with_microsoft_connects_a_microsoft_365_mailbox_and_syncs_and_sends(
    app, microsoft, oauth_server, oauth_dovecot, smtp_oauth, mailbox, make_user, login
):
    oauth_dovecot.deliver(mailbox.email, raw_message(1, to=mailbox.email))
    user = make_user()
    client = login(user)
    started = client.post("/settings/accounts/oauth/microsoft")
    query = parse_qs(urlsplit(started.headers["Location"]).query)
    assert "offline_access" in query["scope"][0].split()  # Microsoft's refresh token
    assert query["prompt"] == ["select_account"]
    response = sign_in(client, "/settings/accounts/oauth/microsoft")
    assert response.status_code == 303, response.data
    account = account_of(user)
    # An address of no known consumer domain is a Microsoft 365 (work or school) mailbox.
    assert account.provider == "office365" and account.auth_type == "xoauth2"
    assert account.email_address == mailbox.email
    assert jobs.run_account_sync(app, account.id).ok
    assert message_count(account.id) == 1
    assert f"user=<{mailbox.email}>, method=XOAUTH2" in oauth_dovecot.log()
    client = smtp.connect(send.smtp_settings(app, account_of(user)))
    try:
        smtp.deliver(client, mailbox.email, ["carla@customer.test"], b"Subject: hi\r\n\r\nhi\r\n",
                     smtputf8=False)  # fmt: skip
    finally:
        smtp.close(client)
    assert smtp_oauth.handler.oauth_logins == [mailbox.email]


def test_a_rotated_refresh_token_replaces_the_old_one(
    app, microsoft, oauth_server, mailbox, make_user, login
):
    oauth_server.rotate_refresh_tokens = True  # as Microsoft does
    user = make_user()
    sign_in(login(user), "/settings/accounts/oauth/microsoft")
    first = secret_box(app).decrypt(account_of(user).refresh_token_encrypted)
    for _renewal in range(2):
        account = account_of(user)
        account.token_expires_at = utcnow()
        db.session.commit()
        oauth.fresh_access_token(app, account)
    latest = secret_box(app).decrypt(account_of(user).refresh_token_encrypted)
    assert latest != first and oauth_server.refreshes == 2
    assert oauth_server.grants[first].revoked and not oauth_server.grants[latest].revoked
    assert jobs.run_account_sync(app, account_of(user).id).ok


def test_a_forged_or_replayed_callback_is_refused(app, google, mailbox, make_user, login):
    user = make_user()
    client = login(user)
    started = client.post("/settings/accounts/oauth/google")
    approved = requests.get(started.headers["Location"], allow_redirects=False, timeout=10)
    back = urlsplit(approved.headers["Location"])
    query = parse_qs(back.query)
    forged = client.get(f"{back.path}?code={query['code'][0]}&state=not-the-state")
    assert forged.status_code == 422
    assert b"not started here" in forged.data
    # The flow was used up by the failed attempt: the real state no longer works either.
    replay = client.get(f"{back.path}?{back.query}", follow_redirects=True)
    assert b"That sign-in has expired or was not started here" in replay.data
    assert account_of(user) is None


def test_a_cancelled_sign_in_says_so(app, google, make_user, login):
    client = login(make_user())
    started = client.post("/settings/accounts/oauth/google")
    state = parse_qs(urlsplit(started.headers["Location"]).query)["state"][0]
    response = client.get(f"/settings/accounts/oauth/callback?error=access_denied&state={state}")
    assert response.status_code == 422 and b"The sign-in was cancelled." in response.data


def test_an_access_token_is_renewed_before_it_expires(
    app, google, oauth_server, oauth_dovecot, mailbox, make_user, login
):
    oauth_server.token_lifetime = 60  # inside the 5-minute margin from the start
    user = make_user()
    sign_in(login(user))
    account = account_of(user)
    first = secret_box(app).decrypt(account.password_encrypted)
    refreshes = oauth_server.refreshes
    oauth_dovecot.deliver(mailbox.email, raw_message(1, to=mailbox.email))

    assert jobs.run_account_sync(app, account.id).ok
    account = account_of(user)
    renewed = secret_box(app).decrypt(account.password_encrypted)
    assert oauth_server.refreshes == refreshes + 1
    assert renewed != first and renewed in oauth_server.tokens
    assert message_count(account.id) == 1

    # A token far from expiry is used as it is: no refresh on every pass.
    oauth_server.token_lifetime = 3600
    assert jobs.run_account_sync(app, account.id).ok  # renews once more (60 s left)
    refreshes = oauth_server.refreshes
    assert jobs.run_account_sync(app, account.id).ok
    assert oauth_server.refreshes == refreshes


def test_an_expired_token_the_server_refuses_is_renewed_on_the_next_pass(
    app, google, oauth_server, mailbox, make_user, login
):
    user = make_user()
    sign_in(login(user))
    account = account_of(user)
    oauth_server.expire_access_tokens()  # Dovecot now refuses the stored token
    account.token_expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert jobs.run_account_sync(app, account.id).ok
    assert account_of(user).token_expires_at > utcnow()


def test_revocation_needs_reauthentication_and_sign_in_again_keeps_settings(
    app, google, oauth_server, oauth_dovecot, mailbox, make_user, login
):
    user = make_user()
    client = login(user)
    sign_in(client)
    account = account_of(user)
    account.since, account.folder_mode, account.chosen_folders = "all", "chosen", ["INBOX"]
    db.session.commit()
    assert jobs.run_account_sync(app, account.id).ok

    oauth_server.revoke_user(mailbox.email)
    account.token_expires_at = utcnow()  # the refresh is refused: invalid_grant
    db.session.commit()
    result = jobs.run_account_sync(app, account.id)
    assert result.error_kind == AUTH_FAILED
    account = account_of(user)
    assert account.sync_state == SYNC_NEEDS_REAUTH
    status = client.get(f"/settings/accounts/{account.id}")
    assert b"Needs re-authentication" in status.data
    assert b"Sign in again" in status.data
    assert b"Re-enter password" not in status.data
    reauth = client.get(f"/settings/accounts/{account.id}/reauth")
    assert b"Sign in again" in reauth.data and b'name="password"' not in reauth.data

    oauth_dovecot.deliver(mailbox.email, raw_message(7, to=mailbox.email))
    response = sign_in(client, f"/settings/accounts/{account.id}/oauth")
    assert response.status_code == 303, response.data
    account = account_of(user)
    assert account.sync_state == SYNC_RUNNING
    assert (account.since, account.folder_mode, account.chosen_folders) == (
        "all",
        "chosen",
        ["INBOX"],
    )
    assert db.session.scalar(select(MailAccount.id).where(MailAccount.user_id == user.id)) == (
        account.id
    )
    assert jobs.run_account_sync(app, account.id).ok
    assert message_count(account.id) == 1


def test_a_revoked_access_token_at_login_needs_reauthentication(
    app, google, oauth_server, mailbox, make_user, login
):
    user = make_user()
    sign_in(login(user))
    account = account_of(user)
    oauth_server.revoke_user(mailbox.email)  # the stored token is still "fresh" locally
    result = jobs.run_account_sync(app, account.id)
    assert result.error_kind == AUTH_FAILED
    account = account_of(user)
    assert account.sync_state == SYNC_NEEDS_REAUTH
    assert "Sign in again" in account.last_error


def test_sign_in_again_with_another_mailbox_is_refused(
    app, google, oauth_server, oauth_dovecot, mailbox, make_user, login
):
    user = make_user()
    client = login(user)
    sign_in(client)
    account = account_of(user)
    other = oauth_dovecot.add_user(f"oauth{next(_boxes)}@mail.test")
    oauth_server.email = other.email
    response = sign_in(client, f"/settings/accounts/{account.id}/oauth")
    assert response.status_code == 422
    assert f"You signed in as {other.email}".encode() in response.data


# --------------------------------------------------------------------------- SMTP


def test_smtp_sends_with_xoauth2_and_a_refused_token_says_sign_in_again(
    app, google, oauth_server, smtp_oauth, mailbox, make_user, login
):
    user = make_user()
    sign_in(login(user))
    account = account_of(user)
    settings = send.smtp_settings(app, account)
    assert settings.auth == "xoauth2"
    client = smtp.connect(settings)
    try:
        smtp.deliver(client, mailbox.email, ["carla@customer.test"], b"Subject: hi\r\n\r\nhi\r\n",
                     smtputf8=False)  # fmt: skip
    finally:
        smtp.close(client)
    assert smtp_oauth.handler.oauth_logins == [mailbox.email]
    assert smtp_oauth.messages[0].rcpt_tos == ["carla@customer.test"]

    oauth_server.revoke_user(mailbox.email)
    with pytest.raises(smtp.SMTPFailure) as failure:
        smtp.connect(settings)
    assert failure.value.kind == AUTH_FAILED and failure.value.permanent
    assert "Sign in again" in failure.value.message


def test_renewal_that_cannot_reach_the_provider_is_a_retry_not_a_reauth(
    app, google, oauth_server, mailbox, make_user, login
):
    user = make_user()
    sign_in(login(user))
    account = account_of(user)
    app.config["OAUTH_ENDPOINTS"] = {
        "google": {**oauth_server.endpoints(), "token_url": "http://127.0.0.1:9/token"}
    }
    account.token_expires_at = utcnow()
    db.session.commit()
    with pytest.raises(MailConnectionError) as failure:
        oauth.fresh_access_token(app, account)
    assert failure.value.transient


@pytest.mark.parametrize("keep_mail", ["1", "0"])
def test_removing_the_mailbox_revokes_the_grant_at_the_provider(
    app, google, oauth_server, mailbox, make_user, login, keep_mail
):
    user = make_user()
    client = login(user)
    sign_in(client)
    account = account_of(user)
    refresh = secret_box(app).decrypt(account.refresh_token_encrypted)
    assert not oauth_server.grants[refresh].revoked
    removed = client.post(f"/settings/accounts/{account.id}/remove", data={"keep_mail": keep_mail})
    assert removed.status_code == 303
    assert oauth_server.grants[refresh].revoked  # Threadline has no way back in
    page = client.get("/settings/accounts/").get_data(as_text=True)
    assert "could not be reached" not in page


def test_removal_goes_ahead_when_the_provider_cannot_be_reached_and_says_what_to_do(
    app, google, oauth_server, mailbox, make_user, login
):
    user = make_user()
    client = login(user)
    sign_in(client)
    account = account_of(user)
    refresh = secret_box(app).decrypt(account.refresh_token_encrypted)
    app.config["OAUTH_ENDPOINTS"] = {
        "google": {**oauth_server.endpoints(), "revoke_url": "http://127.0.0.1:9/revoke"}
    }
    removed = client.post(f"/settings/accounts/{account.id}/remove", data={"keep_mail": "0"})
    assert removed.status_code == 303
    assert account_of(user) is None
    assert not oauth_server.grants[refresh].revoked
    page = client.get("/settings/accounts/").get_data(as_text=True)
    assert "Google could not be reached to end Threadline&#39;s access" in page


def test_a_microsoft_mailbox_removal_says_where_to_end_the_access(app, make_user, login):
    user = make_user()
    client = login(user)
    account = MailAccount(
        user_id=user.id,
        email_address="ana@contoso.test",
        username="ana@contoso.test",
        provider="office365",
        auth_type="xoauth2",
        password_encrypted=secret_box(app).encrypt("access"),
        refresh_token_encrypted=secret_box(app).encrypt("refresh"),
        imap_host="outlook.office365.com",
        imap_port=993,
        imap_security="ssl",
    )
    db.session.add(account)
    db.session.commit()
    client.post(f"/settings/accounts/{account.id}/remove", data={"keep_mail": "0"})
    page = client.get("/settings/accounts/").get_data(as_text=True)
    assert "Microsoft lets apps keep their access until you remove it" in page


# --------------------------------------------------------------------------- in the browser


@pytest.mark.browser
@pytest.mark.imap
def test_sign_in_with_google_in_the_browser(
    live_server, page, google, oauth_server, mailbox, make_user
):
    from playwright.sync_api import expect

    from tests.servers.browser import sign_in_with_session

    oauth_server.client.redirect_uris.append(f"{live_server.url}/settings/accounts/oauth/callback")
    user = make_user()
    sign_in_with_session(page, live_server.app, live_server.url, user)
    page.goto(live_server.url + "/settings/accounts/new")
    page.get_by_role("button", name="Sign in with Google").click()

    # The local provider approves at once and sends the browser back to step 2: folders.
    page.wait_for_url(re.compile(r".*/settings/accounts/\d+/folders\?connected=1$"))
    expect(page.get_by_role("status")).to_contain_text(f"{mailbox.email} is connected")
    page.get_by_label("How far back").select_option("all")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(re.compile(r".*/settings/accounts/\d+$"))
    expect(page.get_by_role("heading", name=mailbox.email)).to_be_visible()
    expect(page.locator("h2 .badge")).to_have_text(re.compile(r"^(Syncing|Up to date)$"))
    account = account_of(user)
    assert account.auth_type == "xoauth2" and account.email_address == mailbox.email
    assert account.since == "all"  # the choice made in step 2
    assert secret_box(live_server.app).decrypt(account.password_encrypted) not in page.content()


def test_sending_signs_in_with_the_token_and_waits_or_fails_when_it_cannot_be_renewed(
    app, google, oauth_server, oauth_dovecot, smtp_oauth, mailbox, make_user, login
):
    from models import OutgoingMail
    from services import outbox
    from services.outbox import OUTGOING_FAILED, OUTGOING_QUEUED, OUTGOING_SENT

    user = make_user()
    sign_in(login(user))
    account = account_of(user)
    assert jobs.run_account_sync(app, account.id).ok  # Sent is known

    def queued() -> OutgoingMail:
        mail = OutgoingMail(
            user_id=user.id,
            account_id=account.id,
            to=[["Carla", "carla@customer.test"]],
            cc=[],
            bcc=[],
            subject="Quote",
            body_html="<p>Hello</p>",
            references=[],
        )
        db.session.add(mail)
        db.session.commit()
        return outbox.queue_send(user, mail)

    mail = queued()
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    assert smtp_oauth.handler.oauth_logins == [mailbox.email]

    # The provider cannot be reached to renew an expiring token: the mail waits.
    endpoints = oauth_server.endpoints()
    app.config["OAUTH_ENDPOINTS"] = {"google": {**endpoints, "token_url": "http://127.0.0.1:9/"}}
    account = account_of(user)
    account.token_expires_at = utcnow()
    db.session.commit()
    mail = queued()
    assert send.send_due(app) == {mail.id: OUTGOING_QUEUED}

    # Access was revoked: the mail fails and says what to do.
    app.config["OAUTH_ENDPOINTS"] = {"google": endpoints}
    oauth_server.revoke_user(mailbox.email)
    db.session.execute(
        OutgoingMail.__table__.update()
        .where(OutgoingMail.id == mail.id)
        .values(send_at=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    assert send.send_due(app) == {mail.id: OUTGOING_FAILED}
    db.session.expire_all()
    assert "Sign in again" in db.session.get(OutgoingMail, mail.id).error


# --------------------------------------------------------------------------- small rules


def test_oauthbearer_is_used_where_xoauth2_is_not_offered(
    app, google, oauth_dovecot, mailbox, make_user, login, monkeypatch
):
    from imapclient import IMAPClient

    user = make_user()
    sign_in(login(user))
    account = account_of(user)
    original = IMAPClient.capabilities

    def without_xoauth2(self):
        return tuple(c for c in original(self) if c != b"AUTH=XOAUTH2")

    monkeypatch.setattr(IMAPClient, "capabilities", without_xoauth2)
    assert jobs.run_account_sync(app, account.id).ok
    assert f"user=<{mailbox.email}>, method=OAUTHBEARER" in oauth_dovecot.log()


def test_the_address_comes_only_from_an_id_token_for_this_client():
    from tests.servers.oauth import _unsigned_jwt

    token = _unsigned_jwt({"aud": "cid", "email": "Ann@Example.com"})
    assert oauth._id_token_email(token, audience="cid") == "ann@example.com"
    assert oauth._id_token_email(token, audience="another-client") is None
    microsoft = _unsigned_jwt({"aud": ["cid"], "preferred_username": "bo@contoso.com"})
    assert oauth._id_token_email(microsoft, audience="cid") == "bo@contoso.com"
    assert oauth._id_token_email("not a jwt", audience="cid") is None
    assert oauth._id_token_email(None, audience="cid") is None


def test_microsoft_signs_in_microsoft_365_and_outlook_com_mailboxes():
    from mailsync.providers import (
        oauth_provider,
        oauth_provider_for_preset,
        preset_for_oauth,
    )

    assert preset_for_oauth("microsoft", "ann@hotmail.com").key == "outlook"
    assert preset_for_oauth("microsoft", "bo@contoso.com").key == "office365"
    assert preset_for_oauth("google", "cy@team.example").key == "gmail"
    assert oauth_provider_for_preset("office365") == "microsoft"
    assert oauth_provider_for_preset("yahoo") is None
    scope = oauth_provider("microsoft").scope.split()
    assert "https://outlook.office.com/IMAP.AccessAsUser.All" in scope
    assert "https://outlook.office.com/SMTP.Send" in scope and "offline_access" in scope
    assert oauth_provider("google").scope.split()[-1] == "https://mail.google.com/"
    moved = oauth_provider("google", {"google": {"token_url": "http://127.0.0.1:1/token"}})
    assert moved.token_url == "http://127.0.0.1:1/token"
    assert moved.authorize_url == oauth_provider("google").authorize_url


def test_an_app_password_can_replace_the_oauth2_sign_in(
    app, google, oauth_dovecot, mailbox, make_user, login
):
    user = make_user()
    client = login(user)
    sign_in(client)
    account = account_of(user)
    response = client.post(
        f"/settings/accounts/{account.id}/reauth", data={"password": mailbox.password}
    )
    assert response.status_code == 303, response.data
    account = account_of(user)
    assert account.auth_type == "password" and account.refresh_token_encrypted is None
    assert secret_box(app).decrypt(account.password_encrypted) == mailbox.password
    assert jobs.run_account_sync(app, account.id).ok
    assert f"user=<{mailbox.email}>, method=PLAIN" in oauth_dovecot.log()


def test_key_rotation_reencrypts_the_refresh_token(
    app, google, oauth_server, mailbox, make_user, login
):
    from cryptography.fernet import Fernet

    from services.accounts import reencrypt_mail_passwords
    from services.credentials import load_keys

    user = make_user()
    sign_in(login(user))
    account = account_of(user)
    refresh = secret_box(app).decrypt(account.refresh_token_encrypted)
    (old_key,) = load_keys(app.instance_path)
    new_key = Fernet.generate_key()

    def use_keys(*keys: bytes) -> None:
        app.config["MAIL_KEYS"] = ",".join(key.decode() for key in keys)
        app.extensions.pop("threadline_secret_box", None)

    use_keys(new_key, old_key)
    assert reencrypt_mail_passwords(app).reencrypted == 1
    use_keys(new_key)  # the old key is gone: both tokens must read with the new one
    account = account_of(user)
    assert secret_box(app).decrypt(account.refresh_token_encrypted) == refresh
    account.token_expires_at = utcnow()  # renewal reads the refresh token
    db.session.commit()
    assert jobs.run_account_sync(app, account.id).ok


def test_the_folders_page_lists_the_server_folders_with_the_token(
    app, google, mailbox, make_user, login
):
    user = make_user()
    client = login(user)
    sign_in(client)
    account = account_of(user)
    page = client.get(f"/settings/accounts/{account.id}/folders")
    assert page.status_code == 200
    assert b'value="INBOX"' in page.data and b'value="Archive"' in page.data
