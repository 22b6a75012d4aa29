"""Mail HTML cannot make the sanitizer's parser work for minutes or grow its output without
bound (services/html_depth.py), and mail below the bounds is sanitized exactly as before."""

from __future__ import annotations

import random
import re

import pytest

import services.mail_render as mail_render
from mailsync.parse import parse_message
from services.html_depth import (
    _CONTENT_DROPPED,
    MAX_HTML_DEPTH,
    MAX_OPEN_FORMATTING,
    limit_nesting,
)
from services.mail_render import sanitize_email_html
from tests.corpus import corpus_files

# Each took from seconds to minutes (or hundreds of megabytes of output) before.
HOSTILE = {
    "unclosed divs": "<div>x" * 100_000,
    "unclosed blockquotes": "<blockquote>x" * 100_000,
    "nested lists": "<ul><li>x" * 50_000,
    "span end tags that stop at a div": "<span><div>x</span>" * 30_000,
    "formatting reopened by every block": "".join(f"<div><b id={i}>x</div>" for i in range(20_000)),
    "formatting then many blocks": "".join(f"<div><i title={i}></div>" for i in range(40))
    + "<div>x</div>" * 80_000,
    "distinct formatting": "".join(f"<b id={i}>x" for i in range(50_000)),
    "end tags in comments": "<div>x<!--</div>-->" * 50_000,
    "end tags in escaped script": "<div>x<script><!--<script></script></div>--></script>" * 20_000,
    "end tags in style": "<div>x<style></div></style>" * 50_000,
    "end tags in CDATA": "<div>x<svg><![CDATA[></div>]]></svg>" * 30_000,
    "markers": "<object><div><b><b><b></div>" * 5_000 + "<p>x</p>" * 50_000,
    "foster-parented formatting": "<table><b id=1></table>" * 20_000 + "<div>x</div>" * 20_000,
    "divs out of scope of their end": "<div>x<object></div>" * 30_000,
    "links around blocks": "<a href=https://x.test/><div>x" * 30_000,
}


@pytest.mark.timeout(120)  # a hang guard: these took minutes before
@pytest.mark.parametrize("html", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_nesting_is_sanitized_quickly_and_stays_small(html):
    result = sanitize_email_html(html, cid_url=lambda _cid: None).html
    assert "x" in result  # the text is kept
    assert len(result) <= 20 * len(html)  # 224 MB from 150 kB before
    assert nesting_depth(result) <= 2 * MAX_HTML_DEPTH + MAX_OPEN_FORMATTING


def nesting_depth(sanitized: str) -> int:
    """How deep the sanitizer's own (well-formed) output nests."""
    depth = deepest = 0
    void = {"br", "img", "hr", "wbr", "col", "area"}
    for end, name in re.findall(r"<(/?)([a-z0-9]+)", sanitized):
        if name in void:
            continue
        depth += -1 if end else 1
        deepest = max(deepest, depth)
    return deepest


def test_deep_but_plain_nesting_keeps_every_word_and_the_first_levels():
    html = "".join(f"<div>level{i} " for i in range(MAX_HTML_DEPTH + 100))
    result = sanitize_email_html(html, cid_url=lambda _cid: None).html
    assert all(f"level{i} " in result for i in range(MAX_HTML_DEPTH + 100))
    assert result.count("<div>") == MAX_HTML_DEPTH
    kept = limit_nesting("<b>" * (MAX_OPEN_FORMATTING + 5) + "bold")
    assert kept.count("<b>") == MAX_OPEN_FORMATTING and kept.endswith("bold")


# Markup real mail is made of, below the bounds: the sanitized result must not change.
ORDINARY = [
    "<p>One<p>Two<ul><li>a<li>b</ul><table><tr><td>1<td>2<tr><td>3</table>",
    "<!--[if mso]><table><tr><td><![endif]--><div>Outlook</div><!--[if mso]></td></tr></table>"
    "<![endif]--><style>p{color:red}</style><p class=x>styled</p>",
    "<b>bold <i>both</b> italic</i> <a href=https://x.test/>one<a href=https://y.test/>two",
    "<font face=Arial>" * 4 + "sloppy" + "<div><b>unclosed</div>" * 3 + "<p>after",
    "a < b and c > d &amp; <textarea><b>not a tag</b></textarea><script>if (a<b) x()</script>",
    "<svg><title><b>x</b></title></svg><math><mi><div>y</div></mi></math><![CDATA[z]]>",
    "<table><b>foster</b><tr><td><table><tr><td>inner</table></table><select><option>o</select>",
    "<div><span>a</div></span><p><blockquote>q</p></blockquote><h1>h<h2>i</h1>",
]


def sanitized_without_limit(html: str, monkeypatch) -> str:
    with monkeypatch.context() as patch:
        patch.setattr(mail_render, "limit_nesting", lambda markup: markup)
        return sanitize_email_html(html, cid_url=lambda _cid: "/cid").html


@pytest.mark.parametrize("html", ORDINARY)
def test_ordinary_markup_is_sanitized_as_before(html, monkeypatch):
    expected = sanitized_without_limit(html, monkeypatch)
    assert sanitize_email_html(html, cid_url=lambda _cid: "/cid").html == expected


def test_corpus_mail_html_is_sanitized_as_before(monkeypatch):
    files = corpus_files()
    if not files:
        pytest.skip("the shared email corpus is absent")
    compared = 0
    for path in files:
        html = parse_message(path.read_bytes()).html_body
        if not html:
            continue
        expected = sanitized_without_limit(html, monkeypatch)
        assert sanitize_email_html(html, cid_url=lambda _cid: "/cid").html == expected, path.name
        compared += 1
    assert compared > 50


TAGS = "div span b i a font p li ul td tr table object template blockquote svg mi select".split()


def test_random_tag_soup_stays_within_the_bounds():
    rng = random.Random(1207)
    pieces = ["<!--", "-->", "<script>", "</script>", "<style>", "<![CDATA[", "]]>", "<", "x"]
    for _ in range(30):
        soup = []
        for _ in range(4000):
            roll = rng.random()
            if roll < 0.55:
                soup.append(f"<{rng.choice(TAGS)} id={rng.randrange(99)}>")
            elif roll < 0.9:
                soup.append(f"</{rng.choice(TAGS)}>")
            else:
                soup.append(rng.choice(pieces))
        html = "".join(soup)
        result = sanitize_email_html(html, cid_url=lambda _cid: None).html
        assert nesting_depth(result) <= 2 * MAX_HTML_DEPTH + MAX_OPEN_FORMATTING
        assert len(result) <= 20 * len(html)


@pytest.mark.timeout(60)  # a hang guard: the first version's tag regex backtracked
@pytest.mark.parametrize(
    "html",
    ["<a" * 100_000, "<!---->" * 100_000, "<a <b <c" * 30_000, "<style></style>x" * 50_000],
    ids=["unclosed tags", "comments", "tags without end", "raw text elements"],
)
def test_the_rewrite_itself_is_linear(html):
    """ "<a" x 5,000 (10 kB) took 57 s in a regex that could backtrack; now each search
    moves on from where the last stopped."""
    result = limit_nesting(html)
    assert "<script" not in result and len(result) <= 4 * len(html) + 10


def test_content_the_sanitizer_drops_is_left_out_before_it():
    """A <title> never closed made the whole mail its content: escaping its "<" grew 1 MB by
    220 kB of "&lt;" for the sanitizer to read, only to drop it."""
    assert _CONTENT_DROPPED <= mail_render._CLEAN_CONTENT_TAGS
    html = "<title>" + "<b>x" * 1000
    assert limit_nesting(html) == "<title>"
    assert limit_nesting("<style>p{}</style><p>a</p>") == "<style></style><p>a</p>"
    assert limit_nesting("<iframe>a<b</iframe>") == "<iframe>a&lt;b</iframe>"  # kept as text
