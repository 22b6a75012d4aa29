"""Print parse_message() throughput against the stdlib email parser on the same messages.

Usage: python bench/parse_bench.py [--seconds 2]. The corpus comes from $THREADLINE_SHARED or
<repo>/../shared (skipped with a note when absent); synthetic typical mails are always used.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mailsync.parse import parse_message  # noqa: E402


def synthetic_messages() -> dict[str, bytes]:
    """Build typical mails: plain, html-only, alternative, alternative with a 50 KB attachment."""
    paragraph = "Hello Anna, thanks for the call today. Here is the summary we discussed. " * 12

    def base(subject: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = "Jörg Müller <joerg@example.com>"
        msg["To"] = "Anna <anna@example.org>, bob@example.org"
        msg["Cc"] = "Team <team@example.org>"
        msg["Subject"] = subject
        msg["Date"] = "Tue, 07 Apr 2026 10:00:01 +0200"
        msg["Message-ID"] = "<abc.123@example.com>"
        msg["In-Reply-To"] = "<prev.1@example.org>"
        msg["References"] = "<root.0@example.org> <prev.1@example.org>"
        for hop in range(4):
            msg["Received"] = f"from mx{hop}.example.net by mx.example.org; Tue, 7 Apr 2026"
        return msg

    plain = base("Re: Quarterly numbers – draft")
    plain.set_content(paragraph)
    html_only = base("Newsletter")
    html_only.set_content(f"<html><body><p>{paragraph}</p></body></html>", subtype="html")
    alternative = base("Re: Angebot")
    alternative.set_content(paragraph)
    alternative.add_alternative(f"<html><body><p>{paragraph}</p></body></html>", subtype="html")
    attached = base("Contract")
    attached.set_content(paragraph)
    attached.add_alternative(f"<html><body><p>{paragraph}</p></body></html>", subtype="html")
    attached.add_attachment(
        os.urandom(50_000), maintype="application", subtype="pdf", filename="contract.pdf"
    )
    return {
        "plain": plain.as_bytes(),
        "html-only": html_only.as_bytes(),
        "alternative": alternative.as_bytes(),
        "alt+50KB-attachment": attached.as_bytes(),
    }


def corpus_messages() -> list[bytes]:
    """Return the raw corpus messages, or [] when the shared corpus is absent."""
    shared = Path(os.environ.get("THREADLINE_SHARED") or REPO.parent / "shared")
    folder = shared / "corpus" / "emails"
    if not folder.is_dir():
        print(f"(corpus not found at {folder}; set THREADLINE_SHARED)")
        return []
    skip = {"INDEX.tsv", "SOURCES.md", "CORE_SUBSET.txt"}
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.name not in skip]


def stdlib_parse(raw: bytes) -> object:
    """Parse with policy.default and pull out the body, as a naive ingest would."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    try:
        body = msg.get_body(("plain", "html"))
        if body is not None:
            body.get_content()
    except (LookupError, KeyError, ValueError, AttributeError):
        pass
    return msg["subject"]


def rate(func: Callable[[bytes], object], messages: list[bytes], seconds: float) -> float:
    """Return messages per second for func over messages, repeating for about `seconds`."""
    done = 0
    start = time.perf_counter()
    while True:
        for raw in messages:
            func(raw)
        done += len(messages)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def main() -> None:
    """Run the benchmark and print rates and ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    sets = {name: [raw] for name, raw in synthetic_messages().items()}
    corpus = corpus_messages()
    if corpus:
        sets["corpus (all files)"] = corpus
    print(f"{'set':24} {'parse_message':>14} {'stdlib default':>15} {'ratio':>7} {'ms/msg':>7}")
    for name, messages in sets.items():
        ours = rate(parse_message, messages, args.seconds)
        theirs = rate(stdlib_parse, messages, args.seconds)
        print(f"{name:24} {ours:12.0f}/s {theirs:13.0f}/s {ours / theirs:6.1f}x {1000 / ours:7.3f}")


if __name__ == "__main__":
    main()
