"""mailsync.threading: pure Message-ID and subject helpers (SYNC.md §8)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailsync.threading import (
    GENERIC_SUBJECTS,
    MAX_CHAIN,
    has_reply_prefix,
    normalize_msgid,
    normalize_subject,
    parent_chain,
    parse_id_list,
    subject_fallback_allowed,
)

NOW = datetime(2026, 4, 7, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("<Abc.123@Example.COM>", "abc.123@example.com"),
        ("  <abc@x>  ", "abc@x"),
        ("< abc@\r\n x >", "abc@x"),
        ("abc@x", "abc@x"),  # brackets missing
        ("text before <real@id> after", "real@id"),
        ("<no-at-sign>", None),
        ("<>", None),
        ("", None),
        (None, None),
        ("<" + "a" * 999 + "@x>", None),
    ],
)
def test_normalize_msgid(token, expected):
    assert normalize_msgid(token) == expected


def test_parse_id_list_orders_dedupes_and_drops_garbage():
    value = "<A@x> <b@y>\r\n\t<a@X> <garbage> <c@z>"
    assert parse_id_list(value) == ["a@x", "b@y", "c@z"]
    assert parse_id_list("a@x, b@y") == ["a@x", "b@y"]
    assert parse_id_list("") == [] and parse_id_list(None) == []


def test_parent_chain():
    assert parent_chain(["a@x", "b@x"], "c@x") == ["a@x", "b@x", "c@x"]
    assert parent_chain(["a@x", "b@x"], "b@x") == ["a@x", "b@x"]
    assert parent_chain([], "c@x") == ["c@x"]
    assert parent_chain(["a@x"], None) == ["a@x"]
    long_chain = parent_chain([f"r{i}@x" for i in range(100)], "last@x")
    assert len(long_chain) == MAX_CHAIN and long_chain[-1] == "last@x"


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: Quarterly numbers", "quarterly numbers"),
        ("RE: re: Fwd: FW: Quarterly  numbers ", "quarterly numbers"),
        ("AW: WG: SV: VS: Antw: Angebot", "angebot"),
        ("[crm-list] Re: [other] Quote #42", "quote #42"),
        ("Re[2]: Re(3): Status", "status"),
        ("回复：转发: 答复: 报价", "报价"),
        ("Straße", "strasse"),
        ("Reply needed", "reply needed"),  # "Re" without a colon is a word, not a prefix
        ("", ""),
        (None, ""),
    ],
)
def test_normalize_subject(subject, expected):
    assert normalize_subject(subject) == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: x", True),
        ("fwd: x", True),
        ("[list] AW: x", True),
        ("回复：x", True),
        ("x", False),
        ("[list] x", False),
        ("Reply needed", False),
        ("", False),
    ],
)
def test_has_reply_prefix(subject, expected):
    assert has_reply_prefix(subject) is expected


def test_generic_subjects_are_normalized_forms():
    assert "invoice" in GENERIC_SUBJECTS and "(no subject)" in GENERIC_SUBJECTS
    assert all(s == normalize_subject(s) for s in GENERIC_SUBJECTS if not s.startswith("("))


def allowed(**overrides):
    args = {
        "normalized_subject": "quarterly numbers",
        "has_prefix": True,
        "candidate_last_date": NOW - timedelta(days=3),
        "this_date": NOW,
        "participants_overlap": 2,
    }
    args.update(overrides)
    return subject_fallback_allowed(**args)


def test_subject_fallback_allowed_when_all_rules_hold():
    assert allowed()


@pytest.mark.parametrize(
    "overrides",
    [
        {"normalized_subject": ""},
        {"normalized_subject": "invoice"},
        {"normalized_subject": "hi"},
        {"has_prefix": False},
        {"candidate_last_date": NOW - timedelta(days=120)},
        {"candidate_last_date": None},
        {"this_date": None},
        {"candidate_last_date": datetime(2026, 4, 1)},  # naive vs aware: refuse
        {"participants_overlap": 1},
        {"participants_overlap": 0},
    ],
)
def test_subject_fallback_refused(overrides):
    assert not allowed(**overrides)


def test_subject_fallback_age_window_is_configurable():
    assert not allowed(candidate_last_date=NOW - timedelta(days=50))
    assert allowed(candidate_last_date=NOW - timedelta(days=50), max_age_days=60)
