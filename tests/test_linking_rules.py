"""Blocking and auto-linking rules, edge case by edge case."""

import pytest

from services.errors import ValidationError
from services.linking_rules import (
    LinkTarget,
    address_is_blocked,
    decide_auto_link,
    message_is_hidden,
    normalize_block_entry,
)

ME = ["me@team.test"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("Spam@Example.COM", "spam@example.com"),
        ("  @Example.com ", "@example.com"),
        ("*@example.com", "@example.com"),
        ("@Intranet", "@intranet"),  # a LAN install has single-label domains
    ],
)
def test_entries_are_normalized(entry, expected):
    assert normalize_block_entry(entry) == expected


@pytest.mark.parametrize(
    "entry", ["", "example.com", "@", "@.intranet", "a b@example.com", "@.com", "@lan."]
)
def test_bad_entries_are_refused(entry):
    with pytest.raises(ValidationError):
        normalize_block_entry(entry)


def test_blocked_sender_alone_with_the_user_is_hidden():
    assert message_is_hidden(["spam@example.com", "me@team.test"], ME, ["spam@example.com"])


def test_blocked_sender_with_unblocked_cc_is_not_hidden():
    participants = ["spam@example.com", "me@team.test", "carla@customer.test"]
    assert not message_is_hidden(participants, ME, ["spam@example.com"])


def test_domain_entry_covers_subdomains_but_not_lookalikes():
    assert address_is_blocked("x@news.example.com", ["@example.com"])
    assert address_is_blocked("x@example.com", ["@example.com"])
    assert not address_is_blocked("x@notexample.com", ["@example.com"])


def test_matching_ignores_case():
    assert message_is_hidden(["SPAM@Example.com"], ["ME@team.test"], ["spam@example.com"])


def test_mail_to_myself_is_never_hidden():
    assert not message_is_hidden(["me@team.test"], ME, ["@team.test"])


def test_no_block_list_hides_nothing():
    assert not message_is_hidden(["spam@example.com"], ME, [])


def test_auto_link_exactly_one_open_item():
    deal = LinkTarget("deal", 3)
    assert decide_auto_link([deal]).target == deal
    assert decide_auto_link([deal, deal]).target == deal  # same item via two persons
    several = decide_auto_link([deal, LinkTarget("lead", 4)])
    assert several.target is None and several.needs_choice
    none = decide_auto_link([])
    assert none.target is None and not none.needs_choice
