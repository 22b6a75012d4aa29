"""Calendar invitations: what a meeting request, reply or cancellation says is shown and
found, also when the calendar is all the mail carries (mailsync/invitation.py)."""

from __future__ import annotations

import random

from mailsync.invitation import invitation_text
from mailsync.parse import parse_message
from mailsync.prepare import for_search
from tests.test_parse import message_of, multipart, part

# What Outlook sends for a meeting request (shortened), folded at 75 octets as RFC 5545 says.
REQUEST = (
    "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nPRODID:Microsoft Exchange Server 2010\r\n"
    "VERSION:2.0\r\nBEGIN:VTIMEZONE\r\nTZID:W. Europe Standard Time\r\nBEGIN:STANDARD\r\n"
    "DTSTART:16010101T030000\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\n"
    "END:VTIMEZONE\r\nBEGIN:VEVENT\r\n"
    'ORGANIZER;CN="Berg, Bo":mailto:bo@vendor.test\r\n'
    "ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Carla:mailto:c\r\n"
    " arla@customer.test\r\n"
    "DESCRIPTION;LANGUAGE=en-US:Agenda:\\n1. Scope\\n2. Prices\\, discounts\\n\r\n"
    "SUMMARY;LANGUAGE=en-US:Kick-off: Zeppelin project\r\n"
    "DTSTART;TZID=W. Europe Standard Time:20261208T100000\r\n"
    "DTEND;TZID=W. Europe Standard Time:20261208T113000\r\n"
    "UID:040000008200E00074C5B7101A82E0080000000\r\n"
    "LOCATION;LANGUAGE=en-US:Room 3\\, 2nd floor\\; main build\r\n ing\r\n"
    "END:VEVENT\r\nEND:VCALENDAR\r\n"
)


def test_a_meeting_request_is_summarized():
    assert invitation_text(REQUEST) == (
        "Invitation: Kick-off: Zeppelin project\n"
        "When: 2026-12-08 10:00-11:30 (W. Europe Standard Time)\n"
        "Where: Room 3, 2nd floor; main building\n"
        "Organizer: Berg, Bo <bo@vendor.test>"
    )


def calendar(method: str, *lines: str) -> str:
    event = "\r\n".join(lines)
    return f"BEGIN:VCALENDAR\r\nMETHOD:{method}\r\nBEGIN:VEVENT\r\n{event}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"


def test_replies_cancellations_and_times_read_as_mail_programs_show_them():
    accepted = calendar(
        "REPLY",
        "ATTENDEE;PARTSTAT=ACCEPTED;CN=Carla:mailto:carla@customer.test",
        "SUMMARY:Kick-off",
        "DTSTART:20261208T090000Z",
        "DTEND:20261208T100000Z",
    )
    assert invitation_text(accepted).splitlines() == [
        "Accepted: Kick-off (Carla <carla@customer.test>)",
        "When: 2026-12-08 09:00-10:00 (UTC)",
    ]
    declined = calendar("REPLY", "ATTENDEE;PARTSTAT=DECLINED:mailto:dan@x.test", "SUMMARY:Call")
    assert invitation_text(declined) == "Declined: Call (dan@x.test)"
    cancelled = calendar("CANCEL", "SUMMARY:Call", "DTSTART;VALUE=DATE:20261224")
    assert invitation_text(cancelled) == "Cancelled: Call\nWhen: 2026-12-24 (all day)"
    trip = calendar("PUBLISH", "DTSTART:20261208T220000", "DTEND:20261209T060000")
    assert invitation_text(trip) == "Event: (no title)\nWhen: 2026-12-08 22:00 - 2026-12-09 06:00"
    assert invitation_text("BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\nEND:VTODO\r\nEND:VCALENDAR") == ""


def test_a_reply_that_is_only_a_calendar_is_shown_found_and_listed():
    """Outlook's "Accepted: ..." carries no text part at all."""
    accepted = calendar(
        "REPLY", "ATTENDEE;PARTSTAT=TENTATIVE;CN=Carla:mailto:carla@customer.test", "SUMMARY:Pilot"
    )
    raw = message_of(
        part(b"Content-Type: text/calendar; charset=utf-8; method=REPLY", accepted.encode())
    )
    parsed = parse_message(raw)
    assert parsed.texts_below == ["Tentatively accepted: Pilot (Carla <carla@customer.test>)"]
    assert parsed.snippet == "Tentatively accepted: Pilot (Carla <carla@customer.test>)"
    # Still listed, to download and open in a calendar program.
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [
        ("invite.ics", "text/calendar")
    ]
    assert "Tentatively accepted: Pilot" in for_search(parsed).text_body


def test_an_invitation_beside_the_text_and_as_an_ics_file():
    request = REQUEST.encode()
    alternative = multipart(
        "alternative",
        "alt",
        part(b"Content-Type: text/plain", b"Please join us."),
        part(b"Content-Type: text/calendar; method=REQUEST", request),
    )
    ics = part(b'Content-Type: application/ics; name="invite.ics"', request)
    parsed = parse_message(message_of(multipart("mixed", "mix", alternative, ics)))
    assert parsed.text_body.strip() == "Please join us."
    (shown,) = parsed.texts_below  # one summary, from the first calendar
    assert shown.startswith("Invitation: Kick-off: Zeppelin project\n")
    only_file = parse_message(
        message_of(multipart("mixed", "mix", part(b"Content-Type: text/plain", b"see"), ics))
    )
    assert only_file.invitation.startswith("Invitation: Kick-off")


def test_a_broken_calendar_never_fails_the_mail():
    rng = random.Random(5545)
    for _ in range(300):
        damaged = bytearray(REQUEST.encode())
        for _ in range(rng.randint(1, 10)):
            damaged[rng.randrange(len(damaged))] = rng.choice(b'\r\n:;"\\=, \x00\xff')
        raw = message_of(part(b"Content-Type: text/calendar", bytes(damaged)))
        parsed = parse_message(raw)
        assert parsed.parse_error is None
        assert isinstance(parsed.invitation, str)
