"""Render untrusted mail safely: sanitize HTML, wrap it for a sandboxed iframe, serve parts.

Everything here is a pure function (no request, no database). SECURITY.md §2 and R1–R15 are the
spec. The one rule that matters most: every rewrite (cid: images, link titles, remote image
blocking, CSS value filtering) happens inside nh3's ``attribute_filter`` while the tree is being
sanitized, never as a string edit on sanitized output (Roundcube CVE-2024-42009).
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import nh3

from services.html_depth import limit_nesting

# Bump whenever the policy below changes (R1). Nothing stores sanitized HTML (each view
# sanitizes anew), so nothing goes stale today; a cache of it must key on this version.
SANITIZER_VERSION = 2

AttributeFilter = Callable[[str, str, str], str | None]

# nh3's default tags minus area/map (image maps point at URLs we do not check), plus the
# presentational tags real mail depends on. Nothing scriptable, no forms, no SVG/MathML (R3).
_TAGS = (set(nh3.ALLOWED_TAGS) - {"area", "map"}) | {"font", "tfoot"}

# Dropped together with their contents (R1); must stay disjoint from _TAGS.
_CLEAN_CONTENT_TAGS = {
    "script", "style", "title", "noscript", "template",
    "textarea", "select", "xmp", "noembed", "noframes",
}  # fmt: skip

_GENERIC_ATTRS = {"dir", "lang", "style"}
_CELL_ATTRS = {
    "align", "valign", "bgcolor", "width", "height", "colspan", "rowspan", "nowrap",
    "headers", "scope", "abbr",
}  # fmt: skip
_TAG_ATTRS: dict[str, set[str]] = {
    "a": {"href", "name", "hreflang", "target"},
    "img": {"src", "alt", "width", "height", "align", "border", "hspace", "vspace"},
    "table": {
        "width",
        "height",
        "border",
        "cellpadding",
        "cellspacing",
        "bgcolor",
        "align",
        "summary",
    },
    "td": _CELL_ATTRS,
    "th": _CELL_ATTRS,
    "tr": {"align", "valign", "bgcolor", "height"},
    "thead": {"align", "valign"},
    "tbody": {"align", "valign"},
    "tfoot": {"align", "valign"},
    "col": {"span", "width", "align", "valign"},
    "colgroup": {"span", "width", "align", "valign"},
    "font": {"color", "face", "size"},
    "hr": {"align", "width", "size", "noshade", "color"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value", "type"},
    "blockquote": {"type"},
    "details": {"open"},
    "del": {"datetime"},
    "ins": {"datetime"},
    "time": {"datetime"},
    "data": {"value"},
    "bdo": {"dir"},
}
for _tag in ("p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "caption", "center", "pre"):
    _TAG_ATTRS.setdefault(_tag, set()).add("align")
# The link title is set by us (the real destination), so a sender's title never reaches <a>.
_ATTRIBUTES = {
    tag: _TAG_ATTRS.get(tag, set()) | ({"title"} if tag != "a" else set()) for tag in _TAGS
}
_ATTRIBUTES["*"] = _GENERIC_ATTRS
# The values of smart-field chips (kept only through extra_attributes, for what the user
# wrote; received mail never gets data-* attributes, R7).
_SMART_FIELD_KEY = re.compile(r"^[a-z][a-z_]{0,40}(\.[a-z][a-z_]{0,40})?$")
MAX_FALLBACK_LENGTH = 200  # as services/smart_fields.MAX_FALLBACK_LENGTH

# Schemes nh3 lets through to attribute_filter; the filter then applies the per-tag rules.
_URL_SCHEMES = {"http", "https", "mailto", "tel", "cid", "data"}
_LINK_REL = "noopener noreferrer nofollow"

# CSS properties that can neither load a resource nor position content (R4).
_STYLE_PROPERTIES = {
    "color", "background-color",
    "font", "font-family", "font-size", "font-style", "font-variant", "font-weight",
    "line-height", "letter-spacing", "word-spacing", "white-space", "word-break", "word-wrap",
    "overflow-wrap", "text-align", "text-decoration", "text-indent", "text-transform",
    "vertical-align", "direction",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left",
    "border-color", "border-style", "border-width", "border-radius", "border-collapse",
    "border-spacing", "border-top-color", "border-right-color", "border-bottom-color",
    "border-left-color", "border-top-style", "border-right-style", "border-bottom-style",
    "border-left-style", "border-top-width", "border-right-width", "border-bottom-width",
    "border-left-width",
    "width", "height", "min-width", "max-width", "min-height", "max-height",
    "display", "float", "clear", "overflow", "table-layout", "caption-side", "empty-cells",
    "list-style-type", "list-style-position", "text-overflow",
}  # fmt: skip
# Any declaration whose value contains one of these is dropped whole (R4, CVE-2026-48846).
_CSS_VALUE_DENY = (
    "url(", "image(", "image-set", "cross-fade", "element(", "var(", "expression",
    "behavior", "binding", "\\", "@import", "/*",
)  # fmt: skip
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")
_CSS_COLOR = re.compile(r"^(#[0-9a-f]{3,8}|[a-z]+|rgba?\([0-9.,%\s]+\)|hsla?\([0-9.,%\sdeg]+\))$")

_RASTER_DATA_URI = re.compile(r"^data:image/(png|gif|jpeg|webp);base64,[a-z0-9+/=\s]*$", re.I)
# WHATWG URL parsing removes ASCII tab/newline anywhere and C0 controls/space at the ends.
_URL_STRIP = re.compile(r"[\t\n\r]")
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))


@dataclass(frozen=True)
class SanitizedHtml:
    """Sanitized mail HTML and what remote content was seen while sanitizing."""

    html: str
    blocked_remote_images: int
    has_remote_content: bool


def sanitize_email_html(
    html: str,
    *,
    cid_url: Callable[[str], str | None],
    allow_remote_images: bool = False,
    extra_attributes: Mapping[str, Collection[str]] | None = None,
) -> SanitizedHtml:
    """Sanitize untrusted mail HTML with the R1–R4 allowlist and rewrite cid: images.

    ``cid_url`` maps a Content-ID (without ``cid:``, %-decoded, not otherwise normalized) to a same-origin path (``/...``) or a raster
    ``data:image/...;base64`` URI, or None when the message has no such part (the src is
    dropped). Remote http(s) images are dropped and counted unless ``allow_remote_images``;
    ``has_remote_content`` is true when any remote image src was seen, blocked or not.
    ``extra_attributes`` (tag -> names) keeps more attributes, as text: the compose editor's
    smart-field chips (services/smart_fields.CHIP_ATTRIBUTES); received mail never gets any.
    """
    stats = {"blocked": 0, "remote": 0}
    attributes = _with_extra(extra_attributes)

    def attribute_filter(tag: str, attr: str, value: str) -> str | None:
        if tag == "img" and attr == "src":
            return _filter_img_src(value, cid_url, allow_remote_images, stats)
        return _filter_attribute(tag, attr, value)

    first = _clean(html, attribute_filter, final=False, attributes=attributes)
    # Second pass over our own, already filtered serialization, only to title links (R13).
    # There <a> never carries a title, nothing is dropped, and nh3 appends the title after the
    # existing href and the rel last, so the title can describe the href just seen.
    last_href: list[str] = []

    def title_filter(tag: str, attr: str, value: str) -> str | None:
        if tag != "a":
            return value
        if attr == "href":
            last_href[:] = [value]
        elif attr == "title":
            return link_title(last_href[0]) if last_href else None
        elif attr == "rel":
            last_href.clear()
        return value

    final = _clean(first, title_filter, final=True, attributes=attributes)
    return SanitizedHtml(
        html=final,
        blocked_remote_images=stats["blocked"],
        has_remote_content=stats["remote"] > 0,
    )


def sanitize_outgoing_html(html: str, *, content_ids: Collection[str]) -> str:
    """Sanitize HTML the user composed with the incoming-mail allowlist (R18).

    `cid:` images stay when they name one of the mail's inline images (`content_ids`); remote
    images stay too (the writer put them there). Links keep only safe schemes.
    """
    known = set(content_ids)

    def attribute_filter(tag: str, attr: str, value: str) -> str | None:
        if tag == "img" and attr == "src":
            url = _normalize_url(value)
            lowered = url.lower()
            if lowered.startswith("cid:"):
                return url if unquote(url[4:]) in known else None
            if _RASTER_DATA_URI.match(url) or lowered.startswith(("http://", "https://")):
                return url
            return None
        return _filter_attribute(tag, attr, value)

    return _clean(html, attribute_filter, final=False)


# Where mail programs start the quoted history of a reply: Gmail, Apple Mail and
# Thunderbird (blockquote type=cite, moz-cite-prefix), Outlook (appendonsend, divRplyFwdMsg).
_QUOTE_START = re.compile(
    r"""<div\b[^>]*\bclass=["']?[^"'>]*\bgmail_quote"""
    r"""|<blockquote\b[^>]*\btype=["']?cite"""
    r"""|<div\b[^>]*\bclass=["']?[^"'>]*\bmoz-cite-prefix"""
    r"""|<div\b[^>]*\bid=["']?(?:appendonsend|divRplyFwdMsg)""",
    re.IGNORECASE,
)
_TAG = re.compile(r"<[^>]*>")


def sanitize_reply_html(
    html: str,
    *,
    cid_url: Callable[[str], str | None],
    allow_remote_images: bool = False,
) -> SanitizedHtml:
    """Sanitize mail HTML like sanitize_email_html, collapsing its quoted history.

    The raw HTML is split where the quoted history starts and each half is sanitized on its
    own; the two balanced, sanitized fragments are then joined inside fixed <details> markup,
    so nothing is edited after sanitizing (R2). Mail that is all quote stays expanded.
    """
    match = _QUOTE_START.search(html)
    whole = sanitize_email_html(html, cid_url=cid_url, allow_remote_images=allow_remote_images)
    if match is None:
        return whole
    reply = sanitize_email_html(
        html[: match.start()], cid_url=cid_url, allow_remote_images=allow_remote_images
    )
    quoted = sanitize_email_html(
        html[match.start() :], cid_url=cid_url, allow_remote_images=allow_remote_images
    )
    if not _TAG.sub("", reply.html).strip() or not _TAG.sub("", quoted.html).strip():
        return whole
    return SanitizedHtml(
        html=(
            reply.html
            + '<details class="quoted"><summary>Show quoted text</summary>'
            + quoted.html
            + "</details>"
        ),
        blocked_remote_images=reply.blocked_remote_images + quoted.blocked_remote_images,
        has_remote_content=reply.has_remote_content or quoted.has_remote_content,
    )


def _with_extra(extra: Mapping[str, Collection[str]] | None) -> dict[str, set[str]]:
    """Return the attribute allowlist with `extra` (tag -> names) added."""
    if not extra:
        return _ATTRIBUTES
    merged = dict(_ATTRIBUTES)
    for tag, names in extra.items():
        merged[tag] = set(merged.get(tag, set())) | set(names)
    return merged


def _clean(
    html: str,
    attribute_filter: AttributeFilter,
    *,
    final: bool,
    attributes: Mapping[str, set[str]] = _ATTRIBUTES,
) -> str:
    """Run nh3 with the mail policy; the first pass adds link targets, the final rel/title."""

    def safe_filter(tag: str, attr: str, value: str) -> str | None:
        # nh3 keeps the original value when the callback raises, so fail closed here.
        try:
            return attribute_filter(tag, attr, value)
        except Exception:
            return None

    return nh3.clean(
        # The final pass reads the first pass's own, well-formed serialization.
        html if final else limit_nesting(html),
        tags=_TAGS,
        clean_content_tags=_CLEAN_CONTENT_TAGS,
        attributes=attributes,
        attribute_filter=safe_filter,
        strip_comments=True,
        link_rel=_LINK_REL if final else None,
        # One attribute per pass keeps the serialization deterministic (nh3 iterates a hash map).
        set_tag_attribute_values={"a": {"title": ""} if final else {"target": "_blank"}},
        url_schemes=_URL_SCHEMES,
        # The first pass already filtered and normalized styles; normalizing twice is not stable.
        filter_style_properties=None if final else _STYLE_PROPERTIES,
    )


def _filter_attribute(tag: str, attr: str, value: str) -> str | None:
    """Return the value to keep for one allowed attribute, or None to drop it."""
    if attr == "style":
        return filter_style(value)
    if tag == "a" and attr == "href":
        return safe_link_href(value)
    if tag == "a" and attr == "target":
        return "_blank"
    if attr == "data-smart-field":
        return value if _SMART_FIELD_KEY.match(value) else None
    if attr == "data-fallback":
        return _CONTROL_CHARS.sub(" ", value)[:MAX_FALLBACK_LENGTH]
    if attr == "data-signature":  # compose's signature block: a signature id
        return value if value.isascii() and value.isdigit() and len(value) <= 18 else None
    return value


def _filter_img_src(
    value: str,
    cid_url: Callable[[str], str | None],
    allow_remote: bool,
    stats: dict[str, int],
) -> str | None:
    """Keep cid: (rewritten), raster data: and, if allowed, remote images; drop the rest."""
    url = _normalize_url(value)
    lowered = url.lower()
    if lowered.startswith("cid:"):
        target = cid_url(unquote(url[4:]))  # cid: URLs are %-encoded Content-IDs (RFC 2392)
        return target if target is not None and _is_local_image_url(target) else None
    if _RASTER_DATA_URI.match(url):
        return url
    if lowered.startswith("//"):
        url, lowered = "https:" + url, "https:" + lowered  # srcdoc resolves it against our page
    if lowered.startswith(("http://", "https://")):
        stats["remote"] += 1
        if allow_remote:
            return url
        stats["blocked"] += 1
    return None


def _is_local_image_url(url: str) -> bool:
    """Return whether a cid_url result is a same-origin path or a raster data: URI."""
    if _RASTER_DATA_URI.match(url):
        return True
    return (
        url.startswith("/")
        and not url.startswith(("//", "/\\"))
        and not any(c.isspace() or ord(c) < 0x20 or c == "\\" for c in url)
    )


def _normalize_url(value: str) -> str:
    """Strip what browsers ignore in URLs so scheme checks see what the browser sees."""
    return _URL_STRIP.sub("", value).strip(_C0_AND_SPACE)


def safe_link_href(value: str) -> str | None:
    """Return the href if it is http(s), mailto, tel or a #fragment; relative URLs are denied."""
    url = _normalize_url(value)
    lowered = url.lower()
    if url.startswith("#") or lowered.startswith(("http://", "https://", "mailto:", "tel:")):
        return url
    return None


def link_title(href: str) -> str | None:
    """Describe a link's real destination, with IDN hosts shown in punycode (R13)."""
    if href.startswith("#"):
        return None
    try:
        parts = urlsplit(href)
    except ValueError:
        return href
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return href
    host = _punycode(parts.hostname)
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if parts.username is not None:
        # Credentials in a URL are a classic disguise (https://bank.example@evil.example).
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _punycode(host: str) -> str:
    """Return the ASCII (punycode) form of a hostname, or the host unchanged if not encodable."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return "".join(
            "xn--" + label.encode("punycode").decode("ascii") if not label.isascii() else label
            for label in host.split(".")
        )


def filter_style(value: str) -> str | None:
    """Keep allowlisted CSS declarations whose values cannot load anything (R4).

    nh3's ``filter_style_properties`` checks property names only, so values are checked here;
    nh3 then re-parses and normalizes what is left.
    """
    kept = []
    for declaration in value.split(";"):
        name, sep, val = declaration.partition(":")
        name = name.strip().lower()
        val = val.strip()
        lowered = val.lower()
        if not sep or not val or any(token in lowered for token in _CSS_VALUE_DENY):
            continue
        if _CONTROL_CHARS.search(val):
            continue  # nh3 would re-serialize these as CSS backslash escapes
        if name == "background" and _CSS_COLOR.match(lowered):
            # The shorthand can carry url(); a colour-only value is kept as background-color.
            name = "background-color"
        if name in _STYLE_PROPERTIES:
            kept.append(f"{name}: {val}")
    result = "; ".join(kept)
    return result or None


# ---------------------------------------------------------------------------------------------
# The iframe document


_BASE_CSS = (
    "html{color-scheme:light}"
    "body{margin:12px;font:14px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;"
    "color:#1f2328;background:#fff;overflow-wrap:anywhere;word-wrap:break-word}"
    "img{max-width:100%;height:auto}"
    "table{max-width:100%}"
    "pre{white-space:pre-wrap}"
    "blockquote{margin:0 0 0 .8ex;padding-left:1ex;border-left:2px solid #d0d7de;color:#57606a}"
    "details>summary{cursor:pointer;color:#57606a;font-size:12px}"
    "p{margin:0 0 1em}"
)


def email_csp(*, allow_remote_images: bool = False) -> str:
    """Return the CSP for the mail document: no script, images only from us unless allowed."""
    img_src = "img-src 'self' data:" + (" https: http:" if allow_remote_images else "")
    return (
        f"default-src 'none'; {img_src}; style-src 'unsafe-inline'; font-src 'none'; "
        "script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'"
    )


def email_document(
    sanitized_html: str, *, rtl: bool | None = None, allow_remote_images: bool = False
) -> str:
    """Wrap sanitized mail HTML in the full document that goes into the iframe srcdoc.

    ``sanitized_html`` must come from ``sanitize_email_html`` (or ``plain_text_to_html``); it
    is inserted as is. ``rtl`` forces the body direction; None lets the browser decide.
    """
    direction = "auto" if rtl is None else ("rtl" if rtl else "ltr")
    csp = html.escape(email_csp(allow_remote_images=allow_remote_images), quote=True)
    return (
        "<!DOCTYPE html>"
        '<html><head><meta charset="utf-8">'
        '<meta http-equiv="x-dns-prefetch-control" content="off">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="referrer" content="no-referrer">'
        f"<style>{_BASE_CSS}</style>"
        f'</head><body dir="{direction}">{sanitized_html}</body></html>'
    )


# ---------------------------------------------------------------------------------------------
# Plain text


_LINK = re.compile(r"""(?:https?://|mailto:)[^\s<>"'`\x00-\x1f\x7f]+""", re.I)
_LINK_BODY = re.compile(r"(?:https?://|mailto:).", re.I)
_TRAILING_PUNCT = ".,;:!?'\")]}>"
_ATTRIBUTION = re.compile(r"^\s*On\s.+\swrote:\s*$", re.I)


def plain_text_to_html(text: str, *, flowed: bool = False, delsp: bool = False) -> str:
    """Render a text/plain body as sanitized HTML: escaped, linkified, quotes collapsed (R11).

    Pass ``flowed``/``delsp`` from the part's ``format=flowed; delsp=yes`` parameters.
    The markup is built from escaped text and then run through ``sanitize_email_html``.
    """
    if flowed:
        text = unflow(text, delsp=delsp)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    markup = _render_lines(lines, collapse=True)
    return sanitize_email_html(markup, cid_url=lambda _cid: None).html


def unflow(text: str, *, delsp: bool = False) -> str:
    """Join format=flowed soft line breaks (RFC 3676 §4), keeping quote depth."""
    out: list[str] = []
    pending: str | None = None
    pending_depth = 0
    for raw in text.replace("\r\n", "\n").split("\n"):
        depth = len(raw) - len(raw.lstrip(">"))
        content = raw[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing (§4.4)
        soft = content.endswith(" ") and content != "-- "
        if pending is not None and depth != pending_depth:
            out.append(_quote_prefix(pending_depth) + pending)
            pending = None
        if soft and delsp:
            content = content[:-1]
        pending = content if pending is None else pending + content
        pending_depth = depth
        if not soft:
            out.append(_quote_prefix(depth) + pending)
            pending = None
    if pending is not None:
        out.append(_quote_prefix(pending_depth) + pending)
    return "\n".join(out)


def _quote_prefix(depth: int) -> str:
    return ">" * depth + " " if depth else ""


MAX_QUOTE_DEPTH = 32  # deeper ">" levels are shown as the text they are (a ">>>>" rule line...)


def _render_lines(lines: list[str], *, collapse: bool, depth: int = 0) -> str:
    """Render lines as paragraphs, with quoted blocks as (collapsed) blockquotes."""
    parts: list[str] = []
    paragraph: list[str] = []
    i = 0

    def flush() -> None:
        if paragraph:
            parts.append('<p dir="auto">' + "<br>".join(paragraph) + "</p>")
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        # "On <date>, <name> wrote:" followed (maybe after a blank line) by a quote.
        attribution = None
        if depth < MAX_QUOTE_DEPTH and _ATTRIBUTION.match(line):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and lines[j].startswith(">"):
                attribution, i = line, j
        if lines[i].startswith(">") and depth < MAX_QUOTE_DEPTH:
            quoted = []
            while i < len(lines) and lines[i].startswith(">"):
                inner = lines[i][1:]
                quoted.append(inner[1:] if inner.startswith(" ") else inner)
                i += 1
            flush()
            body = ""
            if attribution is not None:
                body += '<p dir="auto">' + _linkify(attribution) + "</p>"
            inner = _render_lines(quoted, collapse=False, depth=depth + 1)
            body += "<blockquote>" + inner + "</blockquote>"
            if collapse:
                body = "<details><summary>Show quoted text</summary>" + body + "</details>"
            parts.append(body)
            continue
        if line.strip():
            paragraph.append(_linkify(line))
        else:
            flush()
        i += 1
    flush()
    return "".join(parts)


def _linkify(line: str) -> str:
    """Escape a line of text and turn http(s)/mailto URLs into links."""
    out: list[str] = []
    pos = 0
    for match in _LINK.finditer(line):
        raw = match.group(0)
        url = raw.rstrip(_TRAILING_PUNCT)
        if raw[len(url) :].startswith(")") and url.count("(") > url.count(")"):
            url += ")"  # keep a balanced closing paren, e.g. wiki links
        if not _LINK_BODY.match(url):
            continue
        out.append(html.escape(line[pos : match.start()]))
        out.append(f'<a href="{html.escape(url, quote=True)}">{html.escape(url)}</a>')
        pos = match.start() + len(url)
    out.append(html.escape(line[pos:]))
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Direction


def is_rtl_text(text: str, *, sample: int = 40) -> bool:
    """Return whether right-to-left letters dominate the first ``sample`` strong characters."""
    rtl = ltr = 0
    for char in text:
        kind = unicodedata.bidirectional(char)
        if kind in ("R", "AL"):
            rtl += 1
        elif kind == "L":
            ltr += 1
        else:
            continue
        if rtl + ltr >= sample:
            break
    return rtl > ltr


# ---------------------------------------------------------------------------------------------
# Attachments and raw source


INLINE_SAFE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_SANDBOX_CSP = "sandbox; default-src 'none'"
# C0/C1 controls, path and quoting characters, and bidi embeddings/overrides/isolates (R14).
_FILENAME_STRIP = re.compile(
    '[\x00-\x1f\x7f-\x9f"\\\\/\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]'
)
_ASCII_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+,=@!#$&'\[\]~-]")


def safe_filename(filename: str | None, *, default: str = "attachment") -> str:
    """Strip controls, path characters, quotes and bidi overrides from an untrusted filename."""
    name = _FILENAME_STRIP.sub("", filename or "").strip().strip(".")
    return name[:200] or default


def _ascii_filename(name: str) -> str:
    """Return an ASCII fallback for ``filename=``, keeping the extension when possible."""
    decomposed = unicodedata.normalize("NFKD", name)
    ascii_name = "".join(c for c in decomposed if not unicodedata.combining(c))
    ascii_name = _ASCII_UNSAFE.sub("_", ascii_name.encode("ascii", "replace").decode("ascii"))
    stem, dot, ext = ascii_name.rpartition(".")
    if not dot:
        stem, ext = ascii_name, ""
    if not re.search(r"[A-Za-z0-9]", stem):
        stem = "attachment"
    return stem + (f".{ext}" if dot and ext else "")


def attachment_headers(
    filename: str | None, content_type: str, *, inline_ok: bool
) -> dict[str, str]:
    """Return response headers that keep a mail part from running in our origin (R14).

    Only raster images on ``INLINE_SAFE_TYPES`` are served inline (and only if ``inline_ok``);
    everything else is an ``application/octet-stream`` attachment.
    """
    mime = content_type.split(";", 1)[0].strip().lower()
    inline = inline_ok and mime in INLINE_SAFE_TYPES
    name = safe_filename(filename)
    disposition = "inline" if inline else "attachment"
    return {
        "Content-Type": mime if inline else "application/octet-stream",
        "Content-Disposition": (
            f'{disposition}; filename="{_ascii_filename(name)}"; '
            f"filename*=UTF-8''{quote(name, safe='')}"
        ),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": _SANDBOX_CSP,
        "Cache-Control": "private, no-store",
    }


def raw_source_headers() -> dict[str, str]:
    """Return headers for "show original": plain text that can never render as HTML (R15)."""
    return {
        "Content-Type": "text/plain; charset=utf-8",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": _SANDBOX_CSP,
        "Cache-Control": "private, no-store",
    }
