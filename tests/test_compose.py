"""services/compose.py: subjects, reply recipients, references, quoting, address lists, cid: bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from services import compose
from services.errors import ValidationError


@pytest.mark.parametrize(
    "original,expected",
    [
        ("Hello", "Re: Hello"),
        ("Re: Hello", "Re: Hello"),
        ("RE: Re: Hello", "Re: Hello"),
        ("re:Hello", "Re: Hello"),
        ("AW: Hello", "Re: Hello"),
        ("Re: AW: Hello", "Re: Hello"),
        ("Re[2]: Hello", "Re: Hello"),
        ("SV: Hej", "Re: Hej"),
        ("Fwd: Hello", "Re: Fwd: Hello"),  # answering a forward keeps what it was
        ("", "Re:"),
        ("  Über   ", "Re: Über"),
        ("回复: 你好", "Re: 回复: 你好"),
    ],
)
def test_reply_subject_has_exactly_one_re(original, expected):
    assert compose.reply_subject(original) == expected


@pytest.mark.parametrize(
    "original,expected",
    [
        ("Hello", "Fwd: Hello"),
        ("Fwd: Hello", "Fwd: Hello"),
        ("Fw: Hello", "Fwd: Hello"),
        ("FW: FWD: Hello", "Fwd: Hello"),
        ("WG: Hallo", "Fwd: Hallo"),
        ("Re: Hello", "Fwd: Re: Hello"),
        ("", "Fwd:"),
    ],
)
def test_forward_subject_has_exactly_one_fwd(original, expected):
    assert compose.forward_subject(original) == expected


def test_parse_address_list_names_commas_semicolons_and_international():
    text = (
        '"Doe, John" <John@Example.com>; zoë@exämple.de, Ünal Öz <ünal@müller.de>\n'
        "<x@y.test>, mailto:m@n.test; ,  ; نور <noor@example.sa>"
    )
    assert compose.parse_address_list(text) == [
        ["Doe, John", "john@example.com"],
        ["", "zoë@exämple.de"],
        ["Ünal Öz", "ünal@müller.de"],
        ["", "x@y.test"],
        ["", "m@n.test"],
        ["نور", "noor@example.sa"],
    ]


def test_parse_keeps_what_is_not_an_address_so_it_can_be_flagged():
    pairs = compose.parse_address_list("carla@customer.test, not an address")
    assert compose.invalid_addresses(pairs) == ["not an address"]


@pytest.mark.parametrize(
    "typed",
    [
        "ü<eve@evil.test",  # the header read "ü <eve@evil.test>": not what was typed
        "carla,eve@customer.test",
        "carla;eve@customer.test",
        'carla"@customer.test',
        "carla@customer.test>eve@evil.test",
        "carla(x)@customer.test",
        "carla@[customer].test",
    ],
)
def test_what_separates_or_brackets_addresses_is_never_part_of_one(typed):
    pairs = [["", typed]]  # as the chip input posts a single entry
    assert compose.invalid_addresses(pairs) == [typed]


@pytest.mark.parametrize(
    "address", ['"bo berg"@customer.test', '"a<b"@customer.test', "bob@[10.0.0.5]", "ü@bücher.de"]
)
def test_quoted_local_parts_and_domain_literals_are_addresses(address):
    assert compose.invalid_addresses([["", address]]) == []


def test_format_and_parse_round_trip():
    pairs = [
        ["Doe, John", "j@d.test"],
        ['Say "hi"', "s@d.test"],
        ["", "a@b.test"],
        ["Zoë", "z@d.test"],
    ]
    assert compose.parse_address_list(compose.format_address_list(pairs)) == pairs


def test_names_lose_line_breaks():
    # Outside quotes a line break separates addresses; inside them it becomes a space.
    assert compose.parse_address_list('"Evil\r\nBcc: x" <e@x.test>') == [
        ["Evil Bcc: x", "e@x.test"]
    ]
    assert compose.parse_address_list("a@x.test\r\nb@x.test") == [
        ["", "a@x.test"],
        ["", "b@x.test"],
    ]


OWN = {"me@team.test", "alias@team.test"}


def test_reply_goes_to_reply_to_else_from():
    kwargs = dict(to=[["Me", "me@team.test"]], cc=[], own=OWN)
    to, cc = compose.reply_recipients(
        kind="reply", from_pair=["Carla", "carla@c.test"], reply_to=[], **kwargs
    )
    assert (to, cc) == ([["Carla", "carla@c.test"]], [])
    to, _ = compose.reply_recipients(
        kind="reply",
        from_pair=["Carla", "carla@c.test"],
        reply_to=[["Support", "help@c.test"]],
        **kwargs,
    )
    assert to == [["Support", "help@c.test"]]


def test_reply_all_adds_to_and_cc_without_own_addresses_or_duplicates():
    to, cc = compose.reply_recipients(
        kind="reply_all",
        from_pair=["Carla", "Carla@C.test"],
        reply_to=[],
        to=[["Me", "ME@team.test"], ["Dan", "dan@c.test"], ["Carla", "carla@c.test"]],
        cc=[["Alias", "alias@team.test"], ["Eve", "eve@c.test"], ["Dan", "dan@c.test"]],
        own=OWN,
    )
    assert to == [["Carla", "carla@c.test"], ["Dan", "dan@c.test"]]
    assert cc == [["Eve", "eve@c.test"]]


def test_replying_to_own_sent_mail_goes_to_its_recipients():
    to, cc = compose.reply_recipients(
        kind="reply",
        from_pair=["Me", "me@team.test"],
        reply_to=[],
        to=[["Carla", "carla@c.test"]],
        cc=[],
        own=OWN,
    )
    assert (to, cc) == ([["Carla", "carla@c.test"]], [])


def test_forward_starts_without_recipients():
    assert compose.reply_recipients(
        kind="forward", from_pair=["C", "c@c.test"], reply_to=[], to=[], cc=[], own=OWN
    ) == ([], [])


def test_references_chain():
    assert compose.references_for("<c@x>", ["<a@x>", "<b@x>"], "<b@x>") == [
        "<a@x>",
        "<b@x>",
        "<c@x>",
    ]
    assert compose.references_for("<c@x>", [], "<b@x>") == ["<b@x>", "<c@x>"]
    assert compose.references_for(None, [], None) == []
    assert compose.references_for("<c@x>", ["<c@x>", "<bad\r\n@x>"], None) == ["<c@x>"]
    # The store keeps ids without <>; headers want them.
    assert compose.references_for("c@x", ["a@x"], None) == ["<a@x>", "<c@x>"]


def test_quote_escapes_headers_and_wraps_the_sanitized_body():
    quoted = compose.quote_html(
        kind="reply",
        body_html="<p>Hi</p>",
        from_pair=["<script>x</script>", "c@c.test"],
        date=datetime(2026, 11, 2, 10, 0, tzinfo=UTC),
        subject="S",
        to=[],
        cc=[],
    )
    assert "<script>" not in quoted and "&lt;script&gt;" in quoted
    assert '<blockquote type="cite"><p>Hi</p></blockquote>' in quoted
    forward = compose.quote_html(
        kind="forward",
        body_html="<p>Hi</p>",
        from_pair=["Carla", "c@c.test"],
        date=None,
        subject="Terms & <b>",
        to=[["Me", "me@team.test"]],
        cc=[],
    )
    assert "Forwarded message" in forward and "Terms &amp; &lt;b&gt;" in forward


def test_cid_rewrites_both_ways_only_for_this_drafts_images():
    urls = {"abc@threadline": "/mail/drafts/1/attachments/2"}
    editor = '<p><img src="/mail/drafts/1/attachments/2" alt="x"><img src="/other"></p>'
    stored = compose.body_for_storage(editor, urls)
    assert stored == '<p><img src="cid:abc@threadline" alt="x"><img src="/other"></p>'
    assert compose.body_for_editor(stored, urls) == editor
    assert compose.body_for_editor('<img src="cid:unknown">', urls) == '<img src="cid:unknown">'


def test_parse_local_datetime_reads_the_users_zone():
    when = compose.parse_local_datetime("2026-12-07T09:30", ZoneInfo("Europe/Berlin"))
    assert when == datetime(2026, 12, 7, 8, 30, tzinfo=UTC)
    assert compose.parse_local_datetime("", ZoneInfo("UTC")) is None
    with pytest.raises(ValidationError):
        compose.parse_local_datetime("next tuesday", ZoneInfo("UTC"))
