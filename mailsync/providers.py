"""Provider presets (SYNC.md §13) as data, and autodetection by email domain.

`imap_host`/`smtp_host` may contain "{domain}" for hosts that depend on the user's own
domain (Bluehost, Zimbra); `Provider.settings_for(email)` fills it in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Provider:
    key: str
    label: str
    imap_host: str
    imap_port: int
    imap_security: str  # "ssl" (implicit TLS) or "starttls"
    smtp_host: str
    smtp_port: int
    smtp_security: str
    auth_note: str = ""
    needs_app_password: bool = False
    oauth_only: bool = False
    domains: tuple[str, ...] = ()
    requires_domain_host: bool = False
    # Sending: the provider's message size limit (None: unknown, the user may set one), and
    # whether its SMTP server files the Sent copy itself (then Threadline must not append one).
    max_message_bytes: int | None = None
    files_sent_copy: bool = False
    # Group email pacing (services/group_send.py): seconds between two mails and the most
    # mails a minute. Where a provider publishes no per-minute rate these are Threadline's
    # cautious default (10 a minute, one every 6 s), well under every published daily limit.
    send_pause_seconds: int = 6
    sends_per_minute: int = 10

    def send_interval_seconds(self) -> int:
        """Return the seconds between two paced mails: the pause, or the per-minute cap's."""
        return max(self.send_pause_seconds, -(-60 // max(1, self.sends_per_minute)))

    def sending_defaults(self) -> dict[str, int | bool | None]:
        """Return the sending fields of this preset (size limit, own Sent copy)."""
        return {
            "max_message_bytes": self.max_message_bytes,
            "smtp_files_sent_copy": self.files_sent_copy,
        }

    def settings_for(self, email_address: str = "") -> dict[str, str | int]:
        """Return the server fields of this preset, with "{domain}" filled from the address."""
        domain = email_address.rpartition("@")[2].strip().lower()

        def fill(template: str) -> str:
            if "{domain}" in template and not domain:
                return ""
            return template.format(domain=domain)

        return {
            "imap_host": fill(self.imap_host),
            "imap_port": self.imap_port,
            "imap_security": self.imap_security,
            "smtp_host": fill(self.smtp_host),
            "smtp_port": self.smtp_port,
            "smtp_security": self.smtp_security,
        }


OAUTH_NOTE = (
    'Microsoft only accepts OAuth2 sign-in for IMAP: use "Sign in with Microsoft" above '
    "(an administrator sets it up once under Admin > Mail sign-in). This mailbox cannot be "
    "connected with a password."
)
NETEASE_NOTE = (
    "Enable IMAP in the web mail settings and create a client authorization code (授权码); "
    "enter that code as the password."
)

OTHER = Provider(
    "other",
    "Other (IMAP over SSL/STARTTLS)",
    "",
    993,
    "ssl",
    "",
    465,
    "ssl",
    "Enter your server's settings. Port 993 uses SSL; port 143 uses STARTTLS. For a private "
    "CA, upload its certificate.",
)

PROVIDERS: tuple[Provider, ...] = (
    Provider(
        "gmail",
        "Gmail / Google Workspace",
        "imap.gmail.com",
        993,
        "ssl",
        "smtp.gmail.com",
        465,
        "ssl",
        "Use an app password (needs 2-Step Verification; Workspace admins may block it).",
        needs_app_password=True,
        domains=("gmail.com", "googlemail.com"),
        max_message_bytes=25_000_000,
        files_sent_copy=True,
        # Gmail publishes daily limits (500 a day for gmail.com, 2,000 for Workspace:
        # support.google.com/a/answer/166852) and no rate; 20 a minute stays far below the
        # bursts that trip its "sending limit exceeded" (421 4.7.28) answers.
        send_pause_seconds=3,
        sends_per_minute=20,
    ),
    Provider(
        "yahoo",
        "Yahoo Mail",
        "imap.mail.yahoo.com",
        993,
        "ssl",
        "smtp.mail.yahoo.com",
        465,
        "ssl",
        "Create an app password in Yahoo account security and enter it here.",
        needs_app_password=True,
        domains=("yahoo.com", "ymail.com", "rocketmail.com", "yahoo.co.uk", "yahoo.fr"),
    ),
    Provider(
        "office365",
        "Office 365 / Microsoft 365",
        "outlook.office365.com",
        993,
        "ssl",
        "smtp.office365.com",
        587,
        "starttls",
        OAUTH_NOTE,
        oauth_only=True,
        max_message_bytes=20_000_000,
        # "Message rate limit: 30 messages per minute" (Exchange Online limits,
        # learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/
        # exchange-online-limits#sending-limits).
        send_pause_seconds=2,
        sends_per_minute=30,
    ),
    Provider(
        "outlook",
        "Outlook.com / Hotmail / Live",
        "outlook.office365.com",
        993,
        "ssl",
        "smtp-mail.outlook.com",
        587,
        "starttls",
        OAUTH_NOTE,
        oauth_only=True,
        domains=(
            "outlook.com",
            "hotmail.com",
            "live.com",
            "msn.com",
            "outlook.de",
            "hotmail.co.uk",
        ),
        max_message_bytes=20_000_000,
        # Outlook.com publishes a daily limit only (300 recipients, "Sending limits in
        # Outlook.com", support.microsoft.com); the Exchange Online rate below is the ceiling.
        send_pause_seconds=2,
        sends_per_minute=30,
    ),
    Provider(
        "icloud",
        "iCloud Mail",
        "imap.mail.me.com",
        993,
        "ssl",
        "smtp.mail.me.com",
        587,
        "starttls",
        "Create an app-specific password at appleid.apple.com and enter it here.",
        needs_app_password=True,
        domains=("icloud.com", "me.com", "mac.com"),
        # iCloud: at most 1,000 messages a day (support.apple.com/en-us/102198); no rate
        # published: the cautious default applies.
    ),
    Provider(
        "aol",
        "AOL",
        "imap.aol.com",
        993,
        "ssl",
        "smtp.aol.com",
        465,
        "ssl",
        "Create an app password in AOL account security and enter it here.",
        needs_app_password=True,
        domains=("aol.com",),
    ),
    Provider(
        "fastmail",
        "FastMail",
        "imap.fastmail.com",
        993,
        "ssl",
        "smtp.fastmail.com",
        465,
        "ssl",
        "Create an app password (Settings → Privacy & Security) and enter it here.",
        needs_app_password=True,
        domains=("fastmail.com", "fastmail.fm"),
    ),
    Provider(
        "gandi",
        "GandiMail",
        "mail.gandi.net",
        993,
        "ssl",
        "mail.gandi.net",
        465,
        "ssl",
        "Use your mailbox password.",
    ),
    Provider(
        "gmx",
        "GMX",
        "imap.gmx.com",
        993,
        "ssl",
        "mail.gmx.com",
        587,
        "starttls",
        "Enable IMAP access in GMX's web settings first. For gmx.net/.de use imap.gmx.net.",
        domains=("gmx.com", "gmx.us"),
    ),
    Provider(
        "mailru",
        "Mail.ru",
        "imap.mail.ru",
        993,
        "ssl",
        "smtp.mail.ru",
        465,
        "ssl",
        "Create a password for external apps in Mail.ru security settings and enter it here.",
        needs_app_password=True,
        domains=("mail.ru", "inbox.ru", "list.ru", "bk.ru"),
    ),
    Provider(
        "yandex",
        "Yandex",
        "imap.yandex.com",
        993,
        "ssl",
        "smtp.yandex.com",
        465,
        "ssl",
        "Enable IMAP in Yandex Mail settings and create an app password.",
        needs_app_password=True,
        domains=("yandex.com", "yandex.ru", "ya.ru"),
    ),
    Provider(
        "godaddy",
        "GoDaddy (Workspace Email)",
        "imap.secureserver.net",
        993,
        "ssl",
        "smtpout.secureserver.net",
        465,
        "ssl",
        "Use your mailbox password. GoDaddy Microsoft 365 mailboxes need the Microsoft preset.",
    ),
    Provider(
        "hover",
        "Hover",
        "mail.hover.com",
        993,
        "ssl",
        "mail.hover.com",
        587,
        "starttls",
        "Use your mailbox password.",
    ),
    Provider(
        "namecheap",
        "Namecheap Private Email",
        "mail.privateemail.com",
        993,
        "ssl",
        "mail.privateemail.com",
        465,
        "ssl",
        "Use your mailbox password.",
    ),
    Provider(
        "bluehost",
        "Bluehost",
        "mail.{domain}",
        993,
        "ssl",
        "mail.{domain}",
        465,
        "ssl",
        "The server is mail.<your domain>. If the certificate does not match, use the server "
        "name from your Bluehost control panel.",
        requires_domain_host=True,
    ),
    Provider(
        "soverin",
        "Soverin",
        "imap.soverin.net",
        993,
        "ssl",
        "smtp.soverin.net",
        587,
        "starttls",
        "Use your mailbox password.",
        domains=("soverin.net",),
    ),
    Provider(
        "zimbra",
        "Zimbra (self-hosted)",
        "mail.{domain}",
        993,
        "ssl",
        "mail.{domain}",
        587,
        "starttls",
        "Usually mail.<your domain>; ask your administrator for the exact server name.",
        requires_domain_host=True,
    ),
    Provider(
        "123reg",
        "123-reg",
        "imap.123-reg.co.uk",
        993,
        "ssl",
        "smtp.123-reg.co.uk",
        465,
        "ssl",
        "Use your mailbox password.",
    ),
    Provider(
        "126",
        "126.com (NetEase)",
        "imap.126.com",
        993,
        "ssl",
        "smtp.126.com",
        465,
        "ssl",
        NETEASE_NOTE,
        needs_app_password=True,
        domains=("126.com",),
    ),
    Provider(
        "qq",
        "QQ Mail",
        "imap.qq.com",
        993,
        "ssl",
        "smtp.qq.com",
        465,
        "ssl",
        "QQ Mail needs an authorization code (授权码), not your QQ password: enable IMAP in "
        "Settings → Accounts and generate the code there.",
        needs_app_password=True,
        domains=("qq.com", "foxmail.com"),
    ),
    Provider(
        "aliyun",
        "Aliyun Mail",
        "imap.aliyun.com",
        993,
        "ssl",
        "smtp.aliyun.com",
        465,
        "ssl",
        "Enable IMAP in Aliyun Mail settings. Enterprise mailboxes use different servers.",
        domains=("aliyun.com",),
    ),
    Provider(
        "163",
        "163.com (NetEase)",
        "imap.163.com",
        993,
        "ssl",
        "smtp.163.com",
        465,
        "ssl",
        NETEASE_NOTE,
        needs_app_password=True,
        domains=("163.com",),
    ),
    Provider(
        "yeah",
        "Yeah.net (NetEase)",
        "imap.yeah.net",
        993,
        "ssl",
        "smtp.yeah.net",
        465,
        "ssl",
        NETEASE_NOTE,
        needs_app_password=True,
        domains=("yeah.net",),
    ),
    Provider(
        "139",
        "139.com (China Mobile)",
        "imap.139.com",
        993,
        "ssl",
        "smtp.139.com",
        465,
        "ssl",
        "Enable IMAP in 139 Mail settings; an authorization code may be required as password.",
        needs_app_password=True,
        domains=("139.com",),
    ),
    OTHER,
)

PROVIDERS_BY_KEY: dict[str, Provider] = {provider.key: provider for provider in PROVIDERS}
_BY_DOMAIN: dict[str, Provider] = {
    domain: provider for provider in PROVIDERS for domain in provider.domains
}


def get_provider(key: str | None) -> Provider:
    """Return the preset for `key`, or the "Other" preset for unknown keys."""
    return PROVIDERS_BY_KEY.get((key or "").strip().lower(), OTHER)


def provider_for_email(address: str) -> Provider:
    """Return the preset matching the address's domain, or "Other"."""
    domain = address.rpartition("@")[2].strip().lower()
    return _BY_DOMAIN.get(domain, OTHER)


# --------------------------------------------------------------------------- OAuth2


@dataclass(frozen=True)
class OAuthProvider:
    """Where and what to ask an OAuth2 provider for IMAP and SMTP access (XOAUTH2).

    `openid email` is asked beside the mail scopes only so that the token response carries
    an id_token naming the mailbox's address.
    """

    key: str
    label: str
    authorize_url: str
    token_url: str
    revoke_url: str | None
    scope: str
    presets: tuple[str, ...]  # the mail presets (Provider.key) whose accounts it signs in
    # Extra authorize parameters: Google issues a refresh token only with offline access
    # and consent; Microsoft issues one for the offline_access scope.
    authorize_params: tuple[tuple[str, str], ...] = ()
    mailboxes: str = ""  # which mailboxes it signs in, in words, for the Add account page


OAUTH_PROVIDERS: dict[str, OAuthProvider] = {
    "google": OAuthProvider(
        "google",
        "Google",
        "https://accounts.google.com/o/oauth2/v2/auth",
        "https://oauth2.googleapis.com/token",
        "https://oauth2.googleapis.com/revoke",
        "openid email https://mail.google.com/",
        ("gmail",),
        (("access_type", "offline"), ("prompt", "consent")),
        mailboxes="Gmail and Google Workspace",
    ),
    "microsoft": OAuthProvider(
        "microsoft",
        "Microsoft",
        # "common": work or school (Microsoft 365) and personal (Outlook.com) accounts.
        "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        None,  # Microsoft has no token revocation endpoint
        "openid email https://outlook.office.com/IMAP.AccessAsUser.All "
        "https://outlook.office.com/SMTP.Send offline_access",
        ("office365", "outlook"),
        (("prompt", "select_account"),),
        mailboxes="Microsoft 365 and Outlook.com",
    ),
}


def oauth_provider(key: str, overrides: dict | None = None) -> OAuthProvider:
    """Return the OAuth2 provider `key` ("google", "microsoft"), with config overrides.

    `overrides` is the app's OAUTH_ENDPOINTS setting, {key: {"authorize_url": ..., ...}}:
    tests point the endpoints at a local authorization server. Raises KeyError.
    """
    provider = OAUTH_PROVIDERS[key]
    changes = (overrides or {}).get(key) or {}
    return replace(provider, **changes) if changes else provider


def oauth_provider_for_preset(preset_key: str | None) -> str | None:
    """Return the OAuth2 provider key that signs in accounts of a mail preset, if any."""
    for provider in OAUTH_PROVIDERS.values():
        if preset_key in provider.presets:
            return provider.key
    return None


def preset_for_oauth(oauth_key: str, email_address: str) -> Provider:
    """Return the mail preset of an address signed in through OAuth2 provider `oauth_key`.

    Microsoft signs in both Microsoft 365 and Outlook.com mailboxes: the address's domain
    tells which (unknown domains are Microsoft 365 tenants).
    """
    presets = OAUTH_PROVIDERS[oauth_key].presets
    by_domain = provider_for_email(email_address)
    return by_domain if by_domain.key in presets else PROVIDERS_BY_KEY[presets[0]]
