"""What counts as an email address, for users, persons and blocked addresses (one rule).

Deliberately lenient: a local part without spaces, then a domain of one or more non-empty
labels. A LAN install has mailboxes at single-label domains (`alice@localhost`,
`bob@intranet`), so a dot in the domain is not required.
"""

from __future__ import annotations

import re

MAX_ADDRESS_LENGTH = 320
_DOMAIN_RE = re.compile(r"^[^@\s.]+(\.[^@\s.]+)*$")
_LOCAL_RE = re.compile(r"^[^@\s]+$")


def is_valid_domain(domain: str) -> bool:
    """Tell whether `domain` is one or more non-empty labels (example.com, intranet)."""
    return bool(_DOMAIN_RE.match(domain)) and len(domain) <= 255


def is_valid_address(address: str) -> bool:
    """Tell whether a normalized (stripped, lowercased) address is acceptable."""
    local, at, domain = address.rpartition("@")
    return (
        bool(at)
        and bool(_LOCAL_RE.match(local))
        and is_valid_domain(domain)
        and len(address) <= MAX_ADDRESS_LENGTH
    )
