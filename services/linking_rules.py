"""Pure linking and blocking rules (PRODUCT.md "Linking" and "Blocked addresses").

No database here: services/linking.py applies these to rows, so the rules are easy to test
and live in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.addresses import MAX_ADDRESS_LENGTH, is_valid_address, is_valid_domain
from services.errors import ValidationError


def normalize_block_entry(entry: str) -> str:
    """Return a blocked-address entry in canonical form: `someone@example.com` or `@example.com`.

    Raises ValidationError for anything else.
    """
    value = (entry or "").strip().lower()
    if value.startswith("*@"):
        value = value[1:]
    local, at, domain = value.rpartition("@")
    valid = is_valid_domain(domain) if not local else is_valid_address(value)
    if not at or not valid or len(value) > MAX_ADDRESS_LENGTH:
        raise ValidationError(
            {"entry": "Enter an address like someone@example.com or a domain like @example.com."}
        )
    return value


def address_is_blocked(address: str, entries: Iterable[str]) -> bool:
    """Tell whether `address` matches a blocked address or blocked domain entry.

    A domain entry `@example.com` covers example.com and its subdomains (news.example.com),
    never a different domain that merely ends alike (notexample.com).
    """
    address = (address or "").strip().lower()
    domain = address.rpartition("@")[2]
    for entry in entries:
        if entry.startswith("@"):
            blocked_domain = entry[1:]
            if domain == blocked_domain or domain.endswith("." + blocked_domain):
                return True
        elif entry == address:
            return True
    return False


def message_is_hidden(
    participants: Iterable[str], own_addresses: Iterable[str], entries: Iterable[str]
) -> bool:
    """Tell whether a message is hidden: every participant other than the user is blocked.

    A blocked sender with one non-blocked recipient in To or Cc stays visible; a message
    with nobody but the user stays visible (there is nothing to block).
    """
    entries = list(entries)
    if not entries:
        return False
    own = {address.lower() for address in own_addresses}
    others = {address.lower() for address in participants if address} - own
    return bool(others) and all(address_is_blocked(address, entries) for address in others)


@dataclass(frozen=True)
class LinkTarget:
    kind: str  # "deal" | "lead" | "project"
    id: int


@dataclass(frozen=True)
class AutoLinkDecision:
    target: LinkTarget | None
    needs_choice: bool


def decide_auto_link(open_items: Iterable[LinkTarget]) -> AutoLinkDecision:
    """Link only when exactly one open deal, lead or project exists; several ask the user."""
    items = list(dict.fromkeys(open_items))
    if len(items) == 1:
        return AutoLinkDecision(items[0], needs_choice=False)
    return AutoLinkDecision(None, needs_choice=len(items) > 1)
