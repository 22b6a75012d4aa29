"""List a server's folders and guess their roles (SYNC.md §3.1, RFC 6154)."""

from __future__ import annotations

from dataclasses import dataclass

from imapclient import IMAPClient

SPECIAL_USE_ROLES = {
    b"\\sent": "sent",
    b"\\drafts": "drafts",
    b"\\trash": "trash",
    b"\\junk": "junk",
    b"\\archive": "archive",
    b"\\all": "all",
    b"\\flagged": "flagged",
    b"\\important": "important",
}
# Common and localized names, used when the server sends no special-use attribute.
NAME_ROLES = {
    "sent": (
        "sent",
        "sent items",
        "sent messages",
        "sent mail",
        "gesendet",
        "gesendete elemente",
        "envoyés",
        "enviados",
        "inviata",
        "已发送",
        "отправленные",
    ),
    "drafts": ("drafts", "draft", "entwürfe", "brouillons", "borradores", "草稿箱", "черновики"),
    "trash": (
        "trash",
        "deleted items",
        "deleted messages",
        "bin",
        "papierkorb",
        "corbeille",
        "papelera",
        "已删除",
        "корзина",
    ),
    "junk": ("junk", "spam", "junk e-mail", "junk email", "bulk mail", "垃圾邮件", "спам"),
    "archive": ("archive", "archives", "archiv"),
}
SKIP_FLAGS = {b"\\noselect", b"\\nonexistent"}
# Inbox first, then the usual client order; unknown roles sort between archive and junk.
ROLE_ORDER = {"inbox": 0, "sent": 1, "drafts": 2, "archive": 3, None: 4, "junk": 8, "trash": 9}


@dataclass(frozen=True)
class ServerFolder:
    name: str
    delimiter: str | None
    attributes: tuple[str, ...]
    role: str | None

    @property
    def is_sent(self) -> bool:
        return self.role == "sent"


def guess_role(name: str, flags: tuple[bytes, ...], delimiter: str | None) -> str | None:
    """Return the folder's role from special-use flags, else from its (last) name part."""
    if name.upper() == "INBOX":
        return "inbox"
    for flag in flags:
        role = SPECIAL_USE_ROLES.get(flag.lower())
        if role:
            return role
    leaf = name.rsplit(delimiter, 1)[-1] if delimiter else name
    leaf = leaf.strip().lower()
    for role, names in NAME_ROLES.items():
        if leaf in names:
            return role
    return None


def list_server_folders(client: IMAPClient) -> list[ServerFolder]:
    """Return the selectable folders of a logged-in connection, in display order."""
    folders = []
    for flags, delimiter, name in client.list_folders():
        if SKIP_FLAGS & {flag.lower() for flag in flags}:
            continue
        sep = delimiter.decode() if isinstance(delimiter, bytes) else delimiter
        folders.append(
            ServerFolder(
                name=name,
                delimiter=sep,
                attributes=tuple(flag.decode() for flag in flags),
                role=guess_role(name, tuple(flags), sep),
            )
        )
    return sort_folders(folders)


def sort_folders(folders: list) -> list:
    """Sort objects with `role` and `name` attributes: Inbox first, Trash last."""
    return sorted(folders, key=lambda f: (ROLE_ORDER.get(f.role, 4), f.name.lower()))
