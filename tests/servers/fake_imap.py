"""A tiny scripted IMAP server over TLS for quirks Dovecot cannot produce.

It serves one mailbox (INBOX) from a list of messages and can imitate NetEase (SELECT says
"Unsafe Login" until ID was sent), servers that omit UIDNEXT on SELECT, and servers whose
STATUS answer is an empty list. With X-GM-EXT-1 in its capabilities it answers Gmail's
extensions as far as Threadline uses them: X-GM-MSGID/X-GM-THRID/X-GM-LABELS in FETCH,
UID SEARCH X-GM-LABELS <label> (or X-GM-RAW "in:inbox"), UID STORE +/-X-GM-LABELS.
Only what the sync engine sends is implemented.
"""

from __future__ import annotations

import re
import socketserver
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FakeMessage:
    uid: int
    raw: bytes
    flags: tuple[str, ...] = ()
    gm_msgid: int | None = None
    gm_thrid: int | None = None
    gm_labels: tuple[str, ...] = ()


@dataclass
class Quirks:
    require_id: bool = False  # NetEase: SELECT fails until ID is sent
    omit_uidnext: bool = False  # 163/Winmail: no UIDNEXT on SELECT
    empty_status: bool = False  # 163: `* STATUS "INBOX" ()`
    capabilities: str = "IMAP4rev1 ID UIDPLUS"
    no_body_uids: frozenset[int] = frozenset()  # Exchange: FETCH answers without BODY[]


@dataclass
class FakeState:
    messages: list[FakeMessage] = field(default_factory=list)  # INBOX
    uidvalidity: int = 77
    quirks: Quirks = field(default_factory=Quirks)
    commands: list[str] = field(default_factory=list)
    # Other mailboxes: name -> (LIST attributes, messages)
    folders: dict[str, tuple[str, list[FakeMessage]]] = field(default_factory=dict)

    def mailbox(self, name: str) -> list[FakeMessage]:
        if name.upper() == "INBOX":
            return self.messages
        return self.folders[name][1]


def _uid_set(spec: str, uids: list[int]) -> set[int]:
    top = max(uids) if uids else 0
    wanted: set[int] = set()
    for part in spec.split(","):
        if ":" in part:
            low, high = part.split(":")
            a = top if low == "*" else int(low)
            b = top if high == "*" else int(high)
            a, b = min(a, b), max(a, b)
            wanted.update(uid for uid in uids if a <= uid <= b)
        else:
            wanted.add(top if part == "*" else int(part))
    return wanted & set(uids)


def _searched_label(args: str) -> str | None:
    """Return the label a Gmail SEARCH asks for: X-GM-LABELS <label> or X-GM-RAW "in:inbox"."""
    match = re.search(r'X-GM-LABELS\s+("([^"]*)"|(\S+))', args, re.IGNORECASE)
    if match:
        return (match.group(2) if match.group(2) is not None else match.group(3)).replace(
            "\\\\", "\\"
        )
    if re.search(r'X-GM-RAW\s+"?in:inbox"?', args, re.IGNORECASE):
        return "\\Inbox"
    return None


def _label_list(text: str) -> list[str]:
    """Parse a parenthesized list of labels, quoted or atoms: (\\Inbox "My label")."""
    return [
        (quoted.replace("\\\\", "\\") if quoted else atom)
        for quoted, atom in re.findall(r'"((?:[^"\\]|\\.)*)"|([^\s()"]+)', text)
    ]


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        state: FakeState = self.server.state  # type: ignore[attr-defined]
        quirks = state.quirks
        sent_id = False
        selected = "INBOX"
        self._write(f"* OK [CAPABILITY {quirks.capabilities}] fake ready\r\n")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip("\r\n")
            state.commands.append(text)
            tag, _, rest = text.partition(" ")
            command, _, args = rest.partition(" ")
            command = command.upper()
            if command == "UID":
                command, _, args = args.partition(" ")
                command = "UID " + command.upper()
            quoted = re.match(r'"([^"]*)"|(\S+)', args)
            named = (quoted.group(1) or quoted.group(2)) if quoted else "INBOX"
            uids = [m.uid for m in state.mailbox(selected)]
            if command == "CAPABILITY":
                self._write(f"* CAPABILITY {quirks.capabilities}\r\n{tag} OK done\r\n")
            elif command == "LOGIN":
                self._write(f"{tag} OK [CAPABILITY {quirks.capabilities}] logged in\r\n")
            elif command == "ID":
                sent_id = True
                self._write(f'* ID ("name" "fake")\r\n{tag} OK ID completed\r\n')
            elif command == "LIST":
                out = ['* LIST (\\HasNoChildren) "/" "INBOX"\r\n']
                for name, (attributes, _messages) in state.folders.items():
                    out.append(f'* LIST ({attributes}) "/" "{name}"\r\n')
                self._write("".join(out) + f"{tag} OK done\r\n")
            elif command == "STATUS":
                uids = [m.uid for m in state.mailbox(named)]
                if quirks.empty_status:
                    body = '* STATUS "INBOX" ()\r\n'
                else:
                    nxt = (max(uids) if uids else 0) + 1
                    body = (
                        f'* STATUS "{named}" (MESSAGES {len(uids)} UIDNEXT {nxt} '
                        f"UIDVALIDITY {state.uidvalidity})\r\n"
                    )
                self._write(f"{body}{tag} OK done\r\n")
            elif command in ("SELECT", "EXAMINE"):
                if quirks.require_id and not sent_id:
                    self._write(f"{tag} NO SELECT Unsafe Login. Please contact kefu@188.com\r\n")
                    continue
                selected = named
                uids = [m.uid for m in state.mailbox(selected)]
                out = [f"* {len(uids)} EXISTS\r\n", "* FLAGS (\\Seen \\Flagged)\r\n"]
                out.append(f"* OK [UIDVALIDITY {state.uidvalidity}] ok\r\n")
                if not quirks.omit_uidnext:
                    out.append(f"* OK [UIDNEXT {(max(uids) if uids else 0) + 1}] ok\r\n")
                access = "READ-WRITE" if command == "SELECT" else "READ-ONLY"
                out.append(f"{tag} OK [{access}] done\r\n")
                self._write("".join(out))
            elif command == "UID SEARCH":
                match = re.search(r"UID (\S+)", args)
                found = _uid_set(match.group(1), uids) if match else set(uids)
                label = _searched_label(args)
                if label is not None:
                    found = {m.uid for m in state.mailbox(selected) if label in m.gm_labels} & found
                self._write(f"* SEARCH {' '.join(map(str, sorted(found)))}\r\n{tag} OK done\r\n")
            elif command == "UID FETCH":
                spec, _, items = args.partition(" ")
                self._fetch(state.mailbox(selected), _uid_set(spec, uids), items.upper(), quirks)
                self._write(f"{tag} OK done\r\n")
            elif command == "UID STORE" and "X-GM-LABELS" in args.upper():
                # Gmail: +X-GM-LABELS / -X-GM-LABELS (labels) changes a message's labels.
                spec, _, rest = args.partition(" ")
                operation, _, labels = rest.partition(" ")
                names = _label_list(labels)
                for message in state.mailbox(selected):
                    if message.uid not in _uid_set(spec, uids):
                        continue
                    if operation.upper().startswith("+"):
                        added = [n for n in names if n not in message.gm_labels]
                        message.gm_labels = (*message.gm_labels, *added)
                    else:
                        message.gm_labels = tuple(n for n in message.gm_labels if n not in names)
                self._write(f"{tag} OK done\r\n")
            elif command == "LOGOUT":
                self._write(f"* BYE bye\r\n{tag} OK done\r\n")
                return
            else:
                self._write(f"{tag} OK done\r\n")

    def _fetch(
        self, messages: list[FakeMessage], wanted: set[int], items: str, quirks: Quirks
    ) -> None:
        for seq, message in enumerate(messages, start=1):
            if message.uid not in wanted:
                continue
            parts = [f"UID {message.uid}".encode()]
            if "FLAGS" in items:
                parts.append(f"FLAGS ({' '.join(message.flags)})".encode())
            if "INTERNALDATE" in items:
                parts.append(b'INTERNALDATE "01-Nov-2026 10:00:00 +0000"')
            if "RFC822.SIZE" in items:
                parts.append(f"RFC822.SIZE {len(message.raw)}".encode())
            if "X-GM-MSGID" in items and message.gm_msgid:
                parts.append(f"X-GM-MSGID {message.gm_msgid}".encode())
            if "X-GM-THRID" in items and message.gm_thrid:
                parts.append(f"X-GM-THRID {message.gm_thrid}".encode())
            if "X-GM-LABELS" in items:
                labels = " ".join(
                    f'"{label}"' if " " in label else label for label in message.gm_labels
                )
                parts.append(f"X-GM-LABELS ({labels})".encode())
            header_end = message.raw.find(b"\r\n\r\n")
            header = message.raw[: header_end + 4] if header_end >= 0 else message.raw
            match = re.search(r"BODY\.PEEK\[(HEADER\.FIELDS \([^)]*\)|HEADER|)\]", items)
            if match and not (match.group(1) == "" and message.uid in quirks.no_body_uids):
                section = match.group(1)
                data = message.raw if section == "" else header
                parts.append(f"BODY[{section}] {{{len(data)}}}\r\n".encode() + data)
            self._write_bytes(f"* {seq} FETCH (".encode() + b" ".join(parts) + b")\r\n")

    def _write(self, text: str) -> None:
        self._write_bytes(text.encode())

    def _write_bytes(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()


class _TLSServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: FakeState, cert: Path, key: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)

    def get_request(self):
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True), address


class FakeIMAPServer:
    """Start with `FakeIMAPServer(state, cert_file, key_file)`; `.port`, `.stop()`."""

    def __init__(self, state: FakeState, cert: Path, key: Path):
        self.state = state
        self.server = _TLSServer(state, cert, key)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
