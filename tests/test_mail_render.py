"""The iframe document and macro, plain-text rendering, direction and attachment headers."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import unquote

import pytest
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Response

from services.mail_render import (
    MAX_QUOTE_DEPTH,
    attachment_headers,
    email_csp,
    email_document,
    is_rtl_text,
    plain_text_to_html,
    raw_source_headers,
    safe_filename,
    sanitize_email_html,
    unflow,
)
from tests.test_sanitize import assert_safe, parse


class _Frames(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def render_iframe(app, doc: str, title: str) -> str:
    with app.app_context():
        module = app.jinja_env.get_template("macros/mail.html").module
        return str(module.mail_iframe(doc, title))


# -- email_document and the iframe macro (R5, R6, R8) -----------------------------------------


def test_document_has_csp_dns_prefetch_off_and_auto_direction() -> None:
    doc = email_document("<p>Hi</p>")
    assert doc.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in doc
    assert '<meta http-equiv="x-dns-prefetch-control" content="off">' in doc
    assert '<body dir="auto"><p>Hi</p></body>' in doc
    metas = {attrs.get("http-equiv"): attrs.get("content") for _, attrs in parse_tags(doc)}
    csp = metas["Content-Security-Policy"]
    assert "img-src 'self' data:;" in csp
    assert "script-src 'none'" in csp and "default-src 'none'" in csp
    assert "https:" not in csp and "http:" not in csp


def test_document_csp_allows_remote_images_only_when_asked() -> None:
    assert "img-src 'self' data: https: http:;" in email_csp(allow_remote_images=True)
    doc = email_document("<p>Hi</p>", allow_remote_images=True)
    metas = {attrs.get("http-equiv"): attrs.get("content") for _, attrs in parse_tags(doc)}
    assert metas["Content-Security-Policy"] == email_csp(allow_remote_images=True)


def test_document_embeds_the_sanitized_html_byte_for_byte() -> None:
    sanitized = sanitize_email_html(
        '<p style="color:red">a &amp; b <a href="https://x.example/?a=1&amp;b=2">x</a></p>',
        cid_url=lambda _c: None,
    ).html
    doc = email_document(sanitized, rtl=False)
    assert doc.split('<body dir="ltr">', 1)[1] == sanitized + "</body></html>"


@pytest.mark.parametrize(("rtl", "direction"), [(None, "auto"), (True, "rtl"), (False, "ltr")])
def test_document_direction(rtl: bool | None, direction: str) -> None:
    assert f'<body dir="{direction}">' in email_document("x", rtl=rtl)


def parse_tags(markup: str) -> list[tuple[str, dict[str, str | None]]]:
    frames = _Frames()
    frames.feed(markup)
    frames.close()
    return frames.tags


@pytest.mark.parametrize(
    "body",
    [
        '"><script>alert(1)</script>',
        "&quot;><img src=x onerror=alert(1)>",
        "'><svg onload=alert(1)>",
        "</iframe><script>alert(1)</script>",
    ],
)
def test_iframe_macro_escapes_srcdoc_and_pins_sandbox(app, body: str) -> None:
    sanitized = sanitize_email_html(body, cid_url=lambda _c: None).html
    doc = email_document(sanitized)
    rendered = render_iframe(app, doc, 'Mail "from" <x>')
    tags = parse_tags(rendered)
    assert [tag for tag, _ in tags] == ["iframe"]
    attrs = tags[0][1]
    assert attrs == {
        "sandbox": "allow-same-origin allow-popups allow-popups-to-escape-sandbox",
        "referrerpolicy": "no-referrer",
        "title": 'Mail "from" <x>',
        "srcdoc": doc,
    }
    # R5: allow-same-origin (the page reads the content's height) only ever without
    # allow-scripts, pinned above token by token; no mail script can run.
    assert "allow-scripts" not in rendered


def test_iframe_macro_escapes_a_raw_breakout_even_if_unsanitized(app) -> None:
    doc = '"><script>alert(1)</script>'
    rendered = render_iframe(app, doc, "t")
    assert "<script>" not in rendered
    assert parse_tags(rendered)[0][1]["srcdoc"] == doc


# -- plain text (R11) ------------------------------------------------------------------------


def links(markup: str) -> list[dict[str, str | None]]:
    return [dict(attrs) for tag, attrs in parse(markup).elements if tag == "a"]


def test_plain_text_script_is_shown_literally() -> None:
    out = plain_text_to_html("<script>alert(1)</script>")
    assert out == '<p dir="auto">&lt;script&gt;alert(1)&lt;/script&gt;</p>'


def test_plain_text_javascript_linkref_is_not_linked() -> None:
    out = plain_text_to_html("see [1]\n\n[1]: javascript:alert(1)")
    assert links(out) == []
    assert "[1]: javascript:alert(1)" in out


def test_plain_text_quote_breakout_stays_outside_href() -> None:
    out = plain_text_to_html('http://x/"onmouseover=alert(1)"')
    assert [link["href"] for link in links(out)] == ["http://x/"]
    assert "onmouseover" not in {name for _, attrs in parse(out).elements for name, _ in attrs}
    assert_safe(out)


def test_plain_text_bare_www_with_markup_is_escaped_not_linked() -> None:
    out = plain_text_to_html("www.evil.example/<img src=x onerror=alert(1)>")
    assert links(out) == []
    assert [tag for tag, _ in parse(out).elements] == ["p"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in out


def test_plain_text_links_http_https_mailto_only() -> None:
    text = (
        "Docs at https://example.com/a?b=1&c=2, mail mailto:sales@example.com or "
        "ftp://example.com/f and (http://en.wikipedia.org/wiki/Foo_(bar))."
    )
    out = plain_text_to_html(text)
    assert [link["href"] for link in links(out)] == [
        "https://example.com/a?b=1&c=2",
        "mailto:sales@example.com",
        "http://en.wikipedia.org/wiki/Foo_(bar)",
    ]
    for link in links(out):
        assert link["rel"] == "noopener noreferrer nofollow" and link["target"] == "_blank"


def test_plain_text_keeps_line_breaks_and_paragraphs() -> None:
    out = plain_text_to_html("Hi Ann,\nline two\n\nשלום\n")
    assert out == '<p dir="auto">Hi Ann,<br>line two</p><p dir="auto">שלום</p>'


def test_plain_text_collapses_quoted_history() -> None:
    text = (
        "Sounds good.\n\nOn Mon, 3 Feb 2025, Bob <bob@example.com> wrote:\n"
        "> Can we meet?\n>> earlier <b>\n> Thanks\n\nAfter"
    )
    out = plain_text_to_html(text)
    assert out == (
        '<p dir="auto">Sounds good.</p>'
        "<details><summary>Show quoted text</summary>"
        '<p dir="auto">On Mon, 3 Feb 2025, Bob &lt;bob@example.com&gt; wrote:</p>'
        '<blockquote><p dir="auto">Can we meet?</p>'
        '<blockquote><p dir="auto">earlier &lt;b&gt;</p></blockquote>'
        '<p dir="auto">Thanks</p></blockquote></details>'
        '<p dir="auto">After</p>'
    )


def test_quotes_nested_past_the_limit_are_shown_as_text() -> None:
    """A rule line of ">" characters (or a thousand-deep quote) failed the page
    (RecursionError); past MAX_QUOTE_DEPTH levels the rest of the ">" are text."""
    rule = ">" * 5000
    out = plain_text_to_html(f"Above\n{rule}\nOn Monday, Bo wrote:\n{'>' * 40} deep words\nBelow")
    assert out.count("<blockquote>") == 2 * MAX_QUOTE_DEPTH  # two quotes, each cut at the limit
    assert "&gt;" * (5000 - MAX_QUOTE_DEPTH) in out  # the rest of the rule line, as text
    assert "On Monday, Bo wrote:" in out and "deep words" in out and "Below" in out
    assert out.endswith('<p dir="auto">Below</p>')
    deep = ">" * MAX_QUOTE_DEPTH
    out = plain_text_to_html(f"{deep}On Monday, Bo wrote:\n{deep}> the answer")
    assert "On Monday, Bo wrote:" in out and "the answer" in out
    quoted = "\n".join(">" * depth + f" level {depth}" for depth in range(1, 40))
    out = plain_text_to_html(quoted)
    assert all(f"level {depth}" in out for depth in range(1, 40))


def test_plain_text_attribution_without_quote_is_plain_text() -> None:
    assert plain_text_to_html("On Monday I wrote:\nnothing") == (
        '<p dir="auto">On Monday I wrote:<br>nothing</p>'
    )


def test_plain_text_output_is_stable_under_the_sanitizer() -> None:
    out = plain_text_to_html("a <b> http://x.example/?q=<1>\n> q")
    assert sanitize_email_html(out, cid_url=lambda _c: None).html == out


def test_unflow_joins_soft_breaks_and_keeps_quotes_and_signature() -> None:
    text = "This is soft \nwrapped.\n> quoted soft \n> line\n>> deep\n-- \n sig"
    assert unflow(text) == "This is soft wrapped.\n> quoted soft line\n>> deep\n-- \nsig"


def test_unflow_delsp_removes_the_soft_space() -> None:
    assert unflow("Lang \nwort", delsp=True) == "Langwort"


def test_plain_text_flowed() -> None:
    out = plain_text_to_html("one \ntwo\r\n", flowed=True)
    assert out == '<p dir="auto">one two</p>'


# -- direction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rtl"),
    [
        ("שלום, מה שלומך?", True),
        ("مرحبا بك", True),
        ("سلام، حال شما چطور است؟", True),  # Persian
        ("آپ کیسے ہیں؟", True),  # Urdu
        ("Hello, how are you?", False),
        ("123 456 !!!", False),
        ("", False),
        ("Re: שלום וברכה לכולם", True),
        ("Meeting notes שלום", False),
    ],
)
def test_is_rtl_text(text: str, rtl: bool) -> None:
    assert is_rtl_text(text) is rtl


# -- attachments and raw source (R14, R15) ----------------------------------------------------


def filename_star(disposition: str) -> str:
    value = disposition.split("filename*=", 1)[1]
    assert value.startswith("UTF-8''")
    return unquote(value[len("UTF-8''") :], encoding="utf-8")


def test_hebrew_filename_round_trips_via_filename_star() -> None:
    headers = attachment_headers("מסמך חשוב.pdf", "application/pdf", inline_ok=True)
    disposition = headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="attachment.pdf"; ')
    assert filename_star(disposition) == "מסמך חשוב.pdf"
    assert disposition.isascii()


def test_bidi_override_is_removed() -> None:
    headers = attachment_headers("invoice\u202egpj.exe", "image/jpeg", inline_ok=False)
    assert filename_star(headers["Content-Disposition"]) == "invoicegpj.exe"
    assert "\u202e" not in safe_filename("a\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069b")
    assert safe_filename("a\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069b") == "ab"


def test_header_injection_in_filename_adds_no_header() -> None:
    headers = attachment_headers("x.pdf\r\nSet-Cookie: x=y", "application/pdf", inline_ok=False)
    for value in headers.values():
        assert "\r" not in value and "\n" not in value
    response = Response(b"data", headers=Headers(headers))
    assert "Set-Cookie" not in response.headers
    assert set(response.headers.keys()) >= set(headers)


def test_quotes_slashes_and_controls_are_stripped() -> None:
    name = safe_filename('..\\..//etc/"pass\x00wd"\x1b\x7f.txt')
    assert name == "etcpasswd.txt"
    headers = attachment_headers('"><script>alert(1)</script>.pdf', "text/plain", inline_ok=False)
    fallback = headers["Content-Disposition"].split('filename="', 1)[1].split('"', 1)[0]
    assert '"' not in fallback and "\\" not in fallback and "<" not in fallback


def test_missing_filename_gets_a_default() -> None:
    headers = attachment_headers(None, "application/pdf", inline_ok=False)
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"attachment\"; filename*=UTF-8''attachment"
    )


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "image/svg+xml",
        "text/xml",
        "application/xhtml+xml",
        "application/xml",
        "text/html; charset=utf-8",
        "IMAGE/SVG+XML",
        "application/pdf",
        "message/rfc822",
        "",
    ],
)
@pytest.mark.parametrize("inline_ok", [False, True])
def test_dangerous_types_are_octet_stream_attachments(content_type: str, inline_ok: bool) -> None:
    headers = attachment_headers("x", content_type, inline_ok=inline_ok)
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"].startswith("attachment;")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert headers["Cache-Control"] == "private, no-store"


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "image/gif", "image/webp"])
def test_raster_images_are_inline_only_when_allowed(content_type: str) -> None:
    inline = attachment_headers("p", f"{content_type}; name=p", inline_ok=True)
    assert inline["Content-Type"] == content_type
    assert inline["Content-Disposition"].startswith("inline;")
    assert inline["X-Content-Type-Options"] == "nosniff"
    assert inline["Content-Security-Policy"] == "sandbox; default-src 'none'"
    download = attachment_headers("p", content_type, inline_ok=False)
    assert download["Content-Type"] == "application/octet-stream"
    assert download["Content-Disposition"].startswith("attachment;")


def test_raw_source_headers() -> None:
    assert raw_source_headers() == {
        "Content-Type": "text/plain; charset=utf-8",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Cache-Control": "private, no-store",
    }


def test_reply_quote_is_collapsed_behind_show_quoted_text():
    from services.mail_render import sanitize_reply_html

    html = (
        '<div dir="ltr">Sounds good, see you Monday.</div>'
        '<div class="gmail_quote"><div class="gmail_attr">On Mon, Ana wrote:</div>'
        "<blockquote>Shall we meet? <script>alert(1)</script>"
        '<img src="http://tracker.example/p.gif"></blockquote></div>'
    )
    result = sanitize_reply_html(html, cid_url=lambda cid: None)
    reply, _, quoted = result.html.partition('<details class="quoted">')
    assert "Sounds good" in reply and "Shall we meet" not in reply
    assert "<summary>Show quoted text</summary>" in quoted and "Shall we meet?" in quoted
    assert "script" not in result.html and "tracker.example" not in result.html
    assert result.blocked_remote_images == 1


def test_mail_that_is_all_quote_stays_expanded():
    from services.mail_render import sanitize_email_html, sanitize_reply_html

    html = '<blockquote type="cite">Forwarded text only</blockquote>'
    assert sanitize_reply_html(html, cid_url=lambda cid: None) == sanitize_email_html(
        html, cid_url=lambda cid: None
    )
