"""A real Dovecot IMAP server on loopback, configured in a throwaway directory.

Implicit TLS (imaps) with a certificate signed by a test CA, plus a plain port that offers
STARTTLS. Mail users live in a passwd-file and own their Maildirs under a dedicated system
uid, since Dovecot refuses to serve mail as root. `doveadm -c CONFIG` drives the mailbox
from tests: deliver, flag, move, expunge, reset UIDVALIDITY.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MAIL_SYSTEM_USER = "threadline-mail"


def with_shared_umask(method: Callable) -> Callable:
    """Run `method` under umask 022.

    Dovecot's unprivileged processes (auth, login) read the files written here, but
    create_app sets the process umask to 077 (app.make_instance_private), which would
    leave them unreadable to anyone but root. Dovecot itself inherits the umask too.
    """

    @wraps(method)
    def wrapper(*args, **kwargs):
        previous = os.umask(0o022)
        try:
            return method(*args, **kwargs)
        finally:
            os.umask(previous)

    return wrapper


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_mail_system_user() -> tuple[int, int]:
    """Return (uid, gid) of the system user that owns test Maildirs, creating it once."""
    try:
        entry = pwd.getpwnam(MAIL_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                MAIL_SYSTEM_USER,
            ],
            check=True,
        )
        entry = pwd.getpwnam(MAIL_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


@dataclass
class Certificates:
    ca_file: Path
    cert_file: Path
    key_file: Path
    ca_subject: str


def make_certificates(directory: Path, *, common_name: str = "localhost") -> Certificates:
    """Write a private CA and a server certificate for localhost/127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Threadline Test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_file, 0o600)
    return Certificates(ca_file, cert_file, key_file, "CN=Threadline Test CA")


CONFIG_TEMPLATE = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
default_login_user = dovenull
default_internal_user = dovecot
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth_mechanisms}
auth_failure_delay = 0
login_trusted_networks =
first_valid_uid = {uid}
last_valid_uid = {uid}
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:~/Maildir
mail_max_userip_connections = 50
imap_capability = {capability}
{oauth_passdb}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users.d/%u
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users.d/%u
}}
{namespace}service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {plain_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {ssl_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


# Dovecot 2.3's own post-login list (Debian 12), so a profile can take items away:
# `imap_capability` replaces the advertised list; the client then must not use what is gone.
DOVECOT_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
    "STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE"
).split()
STANDARD_FOLDERS = (
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


@dataclass(frozen=True)
class ServerProfile:
    """What kind of IMAP server the test Dovecot imitates.

    `without` takes capabilities away; `courier_namespace` imitates Courier/Cyrus: folders
    under an "INBOX." prefix with "." as separator and no SPECIAL-USE, so roles come from
    names only.
    """

    name: str
    without: tuple[str, ...] = ()
    courier_namespace: bool = False

    def capability(self) -> str:
        if not self.without:
            return "+ID"
        return " ".join(c for c in DOVECOT_CAPABILITIES if c not in self.without)

    def folder(self, name: str) -> str:
        """The server name of a standard folder ("Archive" -> "INBOX.Archive" on Courier)."""
        if self.courier_namespace and name != "INBOX":
            return f"INBOX.{name}"
        return name

    def namespace(self) -> str:
        lines = ["namespace inbox {", "  inbox = yes"]
        if self.courier_namespace:
            lines += ["  separator = .", "  prefix = INBOX."]
        else:
            lines += ["  separator = /"]
        for name, special_use in STANDARD_FOLDERS:
            lines.append(f"  mailbox {name} {{")
            if not self.courier_namespace:
                lines.append(f"    special_use = {special_use}")
            lines += ["    auto = subscribe", "  }"]
        lines.append("}")
        return "\n".join(lines) + "\n"


STANDARD = ServerProfile("standard")
# CONDSTORE but no QRESYNC: the sync takes its older expunge path (count check + UID SEARCH).
# Not in PROFILES, so the profile-wide tests do not run once more; tests/test_sync_qresync.py
# starts it.
NO_QRESYNC = ServerProfile("no-qresync", without=("QRESYNC",))
PROFILES = {
    profile.name: profile
    for profile in (
        STANDARD,
        ServerProfile("no-condstore", without=("CONDSTORE", "QRESYNC")),
        ServerProfile("no-move-uidplus", without=("MOVE", "UIDPLUS")),
        ServerProfile(
            "courier",
            without=("CONDSTORE", "QRESYNC", "SPECIAL-USE", "MOVE"),
            courier_namespace=True,
        ),
    )
}


@dataclass
class MailUser:
    email: str
    password: str
    home: Path


class DovecotServer:
    """A running Dovecot; use `add_user`, `deliver` and the doveadm helpers."""

    @with_shared_umask
    def __init__(
        self, profile: ServerProfile = STANDARD, *, oauth2_introspection_url: str | None = None
    ) -> None:
        """`oauth2_introspection_url` adds Dovecot's oauth2 passdb for SASL XOAUTH2 and
        OAUTHBEARER: tokens are checked at that RFC 7662 endpoint (POST, HTTP Basic from the
        URL's user:password), and the answer's "username" names the mail user. Passwords
        keep working beside it."""
        self.profile = profile
        self.root = Path(tempfile.mkdtemp(prefix="threadline-dovecot-"))
        os.chmod(self.root, 0o755)  # login processes (dovenull) must traverse it
        self.host = "127.0.0.1"
        self.ssl_port = free_port()
        self.plain_port = free_port()
        self.uid, self.gid = ensure_mail_system_user()
        self.certs = make_certificates(self.root)
        self.config = self.root / "dovecot.conf"
        # One passwd-file per user: a new user's file is read on first lookup, whereas a
        # shared file is re-read at most once per second.
        self.users_dir = self.root / "users.d"
        self.users_dir.mkdir()
        self.users: dict[str, MailUser] = {}
        oauth_mechanisms = oauth_passdb = ""
        if oauth2_introspection_url:
            oauth_conf = self.root / "dovecot-oauth2.conf.ext"
            oauth_conf.write_text(
                f"introspection_mode = post\n"
                f"introspection_url = {oauth2_introspection_url}\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n"
                "force_introspection = yes\n"
            )
            oauth_mechanisms = " xoauth2 oauthbearer"
            oauth_passdb = (
                "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {oauth_conf}\n}}\n"
            )
        self.config.write_text(
            CONFIG_TEMPLATE.format(
                root=self.root,
                cert=self.certs.cert_file,
                key=self.certs.key_file,
                uid=self.uid,
                gid=self.gid,
                plain_port=self.plain_port,
                ssl_port=self.ssl_port,
                capability=profile.capability(),
                namespace=profile.namespace(),
                oauth_mechanisms=oauth_mechanisms,
                oauth_passdb=oauth_passdb,
            )
        )

    @property
    def ca_file(self) -> Path:
        return self.certs.ca_file

    @with_shared_umask
    def start(self) -> DovecotServer:
        subprocess.run(["dovecot", "-c", str(self.config)], check=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.ssl_port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"Dovecot did not start; log:\n{self.log()}")

    def stop(self) -> None:
        subprocess.run(
            ["doveadm", "-c", str(self.config), "stop"], check=False, capture_output=True
        )
        pid_file = self.root / "run" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------ users

    @with_shared_umask
    def add_user(self, email: str, password: str = "mail-password-1") -> MailUser:
        """Create a mail user with an empty Maildir (standard folders auto-created)."""
        home = self.root / "homes" / email
        home.mkdir(parents=True, exist_ok=True)
        os.chown(self.root / "homes", self.uid, self.gid)
        os.chown(home, self.uid, self.gid)
        user = MailUser(email=email, password=password, home=home)
        self.users[email] = user
        self._write_user(user)
        return user

    def set_password(self, email: str, password: str) -> None:
        user = self.users[email]
        user.password = password
        self._write_user(user)
        # Dovecot stats a passwd-file at most once per second; let that second pass.
        time.sleep(1.1)

    @with_shared_umask
    def _write_user(self, user: MailUser) -> None:
        path = self.users_dir / user.email
        path.write_text(
            f"{user.email}:{{PLAIN}}{user.password}:{self.uid}:{self.gid}::{user.home}::\n"
        )
        # Dovecot notices a changed passwd-file by its mtime in whole seconds; move it forward.
        stamp = int(max(time.time(), path.stat().st_mtime)) + 1
        os.utime(path, (stamp, stamp))

    # ------------------------------------------------------------------ doveadm

    @with_shared_umask
    def doveadm(self, *args: str, input: bytes | None = None) -> str:
        result = subprocess.run(
            ["doveadm", "-c", str(self.config), *args], input=input, capture_output=True
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"doveadm {' '.join(args)} failed: {result.stderr.decode(errors='replace')}"
            )
        return result.stdout.decode(errors="replace")

    def deliver(self, email: str, raw: bytes, folder: str = "INBOX") -> None:
        """Save one raw message into `folder` (like a delivery)."""
        self.doveadm("save", "-u", email, "-m", folder, input=raw)

    def fill_inbox(self, email: str, raws: list[bytes]) -> None:
        """Put many messages into a (fresh) INBOX at once: written straight into the Maildir
        (one `doveadm save` each would take seconds per hundred), then indexed."""
        home = self.users[email].home
        for sub in ("cur", "new", "tmp"):
            (home / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
        for n, raw in enumerate(raws):
            stored = raw.replace(b"\r\n", b"\n")
            name = f"{int(time.time())}.M{n}P{os.getpid()}.fill,S={len(stored)},W={len(raw)}:2,"
            (home / "Maildir" / "cur" / name).write_bytes(stored)
        for root, dirs, files in os.walk(home):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.gid)
        self.doveadm("index", "-u", email, "INBOX")

    def create_folder(self, email: str, folder: str) -> None:
        self.doveadm("mailbox", "create", "-u", email, folder)

    def delete_folder(self, email: str, folder: str) -> None:
        """Delete a mailbox with its mail (re-creating it starts new UIDs)."""
        self.doveadm("mailbox", "delete", "-u", email, "-r", folder)

    def uids(self, email: str, folder: str = "INBOX") -> list[int]:
        out = self.doveadm("-f", "flow", "fetch", "-u", email, "uid", "mailbox", folder, "ALL")
        return [int(line.split("=", 1)[1]) for line in out.splitlines() if line.startswith("uid=")]

    def flags(self, email: str, folder: str, uid: int) -> set[str]:
        out = self.doveadm(
            "-f", "flow", "fetch", "-u", email, "flags", "mailbox", folder, "uid", str(uid)
        )
        value = out.strip().partition("=")[2]
        return set(value.split())

    def add_flags(self, email: str, folder: str, uid: int, *flags: str) -> None:
        self.doveadm(
            "flags", "add", "-u", email, " ".join(flags), "mailbox", folder, "uid", str(uid)
        )

    def remove_flags(self, email: str, folder: str, uid: int, *flags: str) -> None:
        self.doveadm(
            "flags", "remove", "-u", email, " ".join(flags), "mailbox", folder, "uid", str(uid)
        )

    def move(self, email: str, folder: str, uid: int, destination: str) -> None:
        self.doveadm("move", "-u", email, destination, "mailbox", folder, "uid", str(uid))

    def expunge(self, email: str, folder: str, uid: int) -> None:
        self.doveadm("expunge", "-u", email, "mailbox", folder, "uid", str(uid))

    def set_uidvalidity(self, email: str, folder: str, uidvalidity: int) -> None:
        self.doveadm("mailbox", "update", "-u", email, "--uid-validity", str(uidvalidity), folder)

    def status(self, email: str, folder: str = "INBOX") -> dict[str, int]:
        out = self.doveadm(
            "-f", "flow", "mailbox", "status", "-u", email, "messages uidnext uidvalidity", folder
        )
        fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
        return {key: int(value) for key, value in fields.items() if value.isdigit()}
