"""What counts as an email address, for users, persons and blocked addresses (one rule).

Deliberately lenient: a local part without spaces, then a domain of one or more non-empty
labels. A LAN install has mailboxes at single-label domains (`alice@localhost`,
`bob@intranet`), so a dot in the domain is not required; a domain literal (`bob@[10.0.0.5]`)
and a quoted local part (`"bo berg"@example.com`) are addresses too. Outside quotes neither
part may hold what separates or brackets addresses in a header (`<>()[],;:"` and backslash)
or a control character: written into To, `ü<eve@evil.test` sent the mail elsewhere than it
read.
"""

from __future__ import annotations

import re

MAX_ADDRESS_LENGTH = 320
_NOT_IN_ADDRESS = r'@\s<>()\[\],;:"\\\x00-\x1f\x7f'
_LABEL = rf"[^{_NOT_IN_ADDRESS}.]+"
_DOMAIN_RE = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[(?:IPv6:)?[0-9A-Fa-f.:]+\])$")
_LOCAL_RE = re.compile(rf'^(?:[^{_NOT_IN_ADDRESS}]+|"[^"\\\x00-\x1f\x7f]+")$')


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
