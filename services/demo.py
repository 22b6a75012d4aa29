"""Demo data for a fresh install: a small sales team with believable records.

Deterministic: the same seed always produces the same team, people, deals and dates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select

from extensions import db
from models import (
    DEAL_STAGES,
    VISIBILITY_EVERYONE,
    VISIBILITY_OWNER,
    Deal,
    Lead,
    Organization,
    Person,
    PersonEmail,
    Project,
    Thread,
    User,
)
from services import users
from services.errors import ValidationError

DEMO_PASSWORD = "threadline-demo"
TEAM = (
    ("Maya Okafor", "maya@northwind-sales.test", True),
    ("Lucas Brandt", "lucas@northwind-sales.test", False),
    ("Priya Raman", "priya@northwind-sales.test", False),
)
ORGANIZATIONS = (
    ("Acme Logistics", "acmelogistics.com", "400 Harbor Way\nOakland, CA 94607"),
    ("Bluefin Analytics", "bluefin.io", "22 Pearl Street\nBoston, MA 02110"),
    ("Cedar & Pine Interiors", "cedarpine.co", "9 Mill Lane\nPortland, OR 97209"),
    ("Delta Freight GmbH", "deltafreight.de", "Hafenstraße 12\n20457 Hamburg"),
    ("Evergreen Clinics", "evergreenclinics.org", "1800 Elm Avenue\nDenver, CO 80203"),
    ("Foxglove Studios", "foxglove.studio", "77 Rue Oberkampf\n75011 Paris"),
    ("Granite Peak Outfitters", "granitepeak.com", "315 Canyon Road\nBoulder, CO 80302"),
    ("Helios Solar", "heliossolar.energy", "5 Sunrise Blvd\nPhoenix, AZ 85004"),
    ("Iris Biotech", "irisbio.com", "48 Science Park\nCambridge CB4 0WS"),
    ("Juniper Hotels", "juniperhotels.com", "1200 Ocean Drive\nMiami, FL 33139"),
    ("Kestrel Robotics", "kestrel-robotics.com", "60 Innovation Way\nPittsburgh, PA 15213"),
    ("Lumen Education", "lumen.education", "300 College Street\nToronto, ON M5T 1R4"),
)
FIRST_NAMES = (
    "Olivia",
    "Noah",
    "Emma",
    "Liam",
    "Sofia",
    "Mateo",
    "Amara",
    "Kenji",
    "Hannah",
    "Omar",
    "Chloe",
    "Diego",
    "Ingrid",
    "Tomás",
    "Aisha",
    "Felix",
    "Nina",
    "Ravi",
    "Grace",
    "Jonas",
)
LAST_NAMES = (
    "Andersen",
    "Becker",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fischer",
    "García",
    "Hughes",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "O'Brien",
    "Petrov",
    "Quinn",
    "Rossi",
    "Schmidt",
    "Tanaka",
)
DEAL_TOPICS = (
    "Fleet tracking rollout",
    "Annual license renewal",
    "Data warehouse migration",
    "Showroom redesign",
    "Route optimisation pilot",
    "Patient portal",
    "Brand refresh",
    "Retail expansion",
    "Rooftop installation",
    "Lab automation",
    "Conference package",
    "Warehouse robots",
    "Online courses platform",
    "Support plan upgrade",
    "Security audit",
)
LEAD_TOPICS = (
    "Inbound: pricing question",
    "Webinar sign-up",
    "Referral from partner",
    "Trade show contact",
    "Trial user asking about SSO",
    "Cold reply: interested later",
)
PROJECT_TOPICS = ("Onboarding", "Implementation", "Quarterly review", "Data import", "Training")


@dataclass(frozen=True)
class DemoSummary:
    users: list[tuple[str, str, bool]]  # (name, email, is_admin)
    password: str
    persons: int
    organizations: int
    deals: int
    leads: int
    projects: int
    conversations: int = 0


def _ascii(text: str) -> str:
    table = str.maketrans({"á": "a", "é": "e", "í": "i", "ó": "o", "ú": "u", "'": ""})
    return text.translate(table).lower()


def seed_demo(*, seed: int = 7) -> DemoSummary:
    """Fill an empty database with a demo team and records; commits.

    Raises ValidationError when the database already has users (it never mixes demo data
    into a real install).
    """
    if db.session.scalar(select(func.count(User.id))):
        raise ValidationError(
            {"__all__": "This database already has users; seed-demo only fills a fresh one."}
        )
    rng = random.Random(seed)
    team = [
        users.create_user(email=email, name=name, password=DEMO_PASSWORD, is_admin=is_admin)
        for name, email, is_admin in TEAM
    ]

    def visibility() -> str:
        return VISIBILITY_OWNER if rng.random() < 0.1 else VISIBILITY_EVERYONE

    organizations = [
        Organization(
            name=name,
            domain=domain,
            address=address,
            owner_id=rng.choice(team).id,
            visibility=VISIBILITY_EVERYONE,
        )
        for name, domain, address in ORGANIZATIONS
    ]
    organizations[-1].visibility = VISIBILITY_OWNER
    db.session.add_all(organizations)

    names = [(first, last) for first in FIRST_NAMES for last in LAST_NAMES]
    rng.shuffle(names)
    persons = []
    for index, (first, last) in enumerate(names[:40]):
        organization = organizations[index % len(organizations)]
        person = Person(
            name=f"{first} {last}",
            phone=f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
            organization=organization,
            owner_id=rng.choice(team).id,
            visibility=visibility(),
        )
        local = f"{_ascii(first)}.{_ascii(last)}"
        person.emails.append(PersonEmail(email=f"{local}@{organization.domain}", is_primary=True))
        if index % 4 == 0:
            person.emails.append(PersonEmail(email=f"{_ascii(first)}{index}@gmail.com"))
        persons.append(person)
    db.session.add_all(persons)

    today = date(2026, 11, 1)
    statuses = ["open"] * 17 + ["won"] * 5 + ["lost"] * 3
    deals = []
    for index, status in enumerate(statuses):
        person = persons[(index * 3) % len(persons)]
        deals.append(
            Deal(
                title=f"{person.organization.name}: {DEAL_TOPICS[index % len(DEAL_TOPICS)]}",
                value=Decimal(rng.randrange(20, 900) * 250),
                currency=rng.choice(("USD", "USD", "USD", "EUR", "GBP")),
                stage=DEAL_STAGES[index % len(DEAL_STAGES)],
                status=status,
                expected_close_date=today + timedelta(days=rng.randint(-30, 120)),
                person=person,
                organization=person.organization,
                owner_id=person.owner_id,
                visibility=person.visibility if index % 6 else VISIBILITY_OWNER,
            )
        )
    db.session.add_all(deals)

    leads = [
        Lead(
            title=topic,
            value=Decimal(rng.randrange(4, 80) * 500),
            status=("open", "open", "archived")[index % 3],
            person=persons[-(index + 1)],
            organization=persons[-(index + 1)].organization,
            owner_id=team[index % len(team)].id,
            visibility=VISIBILITY_OWNER if index == 1 else VISIBILITY_EVERYONE,
        )
        for index, topic in enumerate(LEAD_TOPICS)
    ]
    projects = [
        Project(
            title=f"{deal.organization.name}: {PROJECT_TOPICS[index % len(PROJECT_TOPICS)]}",
            status="closed" if index == 0 else "open",
            person=deal.person,
            organization=deal.organization,
            owner_id=deal.owner_id,
            visibility=VISIBILITY_EVERYONE,
        )
        for index, deal in enumerate(d for d in deals if d.status == "won")
    ]
    db.session.add_all(leads + projects)
    db.session.commit()
    conversations = seed_demo_mailbox(team[0], deals)
    return DemoSummary(
        users=[(user.name, user.email, user.is_admin) for user in team],
        password=DEMO_PASSWORD,
        persons=len(persons),
        organizations=len(organizations),
        deals=len(deals),
        leads=len(leads),
        projects=len(projects),
        conversations=conversations,
    )


# --------------------------------------------------------------------------- demo mailbox

DEMO_MAIL_HOST = "demo.invalid"  # never reached: the demo mailbox is paused
DEMO_THREADS = (
    # (subject, customer's words, the seller's answer or None)
    (
        "Renewal terms for next year",
        "Could you send the renewal terms before Friday?",
        "Attached are the terms; happy to walk you through them.",
    ),
    ("Pricing question", "Is the volume discount available on the annual plan?", None),
    (
        "Kick-off agenda",
        "Here is our agenda for Monday's kick-off.",
        "Thanks, looks good. I added one item about data migration.",
    ),
    ("Security questionnaire", "Our IT team needs the security questionnaire filled in.", None),
    (
        "Invoice 4471",
        "Could you resend invoice 4471 with our new address?",
        "Done: the corrected invoice is attached.",
    ),
    ("Contract signed", "The signed contract is attached. Looking forward to it!", None),
)


def seed_demo_mailbox(owner: User, deals: list[Deal]) -> int:
    """Give `owner` a demo mailbox of conversations with the demo customers; return how many.

    The mail goes through the same path as synced mail (blob store, parser, store_batch), so
    it is threaded, matched to persons and linked to their deals by the normal rules. The
    account is paused: there is no server behind it.
    """
    from flask import current_app

    from mailsync import store
    from mailsync.blobstore import blob_root
    from mailsync.prepare import prepare_batch
    from models import SYNC_PAUSED, MailAccount, MailFolder
    from services.credentials import secret_box

    account = MailAccount(
        user_id=owner.id,
        email_address=owner.email,
        provider="other",
        username=owner.email,
        password_encrypted=secret_box(current_app).encrypt("demo mailbox: no server"),
        imap_host=DEMO_MAIL_HOST,
        sync_state=SYNC_PAUSED,
        last_success_at=datetime(2026, 11, 1, 9, 0, tzinfo=UTC),
    )
    db.session.add(account)
    db.session.flush()
    inbox = MailFolder(account_id=account.id, name="INBOX", role="inbox", uidvalidity=1)
    sent = MailFolder(account_id=account.id, name="Sent", role="sent", uidvalidity=1)
    db.session.add_all([inbox, sent])
    db.session.flush()

    raws: dict[int, list[tuple[int, bytes]]] = {inbox.id: [], sent.id: []}
    open_deals = [deal for deal in deals if deal.status == "open"]
    for index, (subject, words, answer) in enumerate(DEMO_THREADS):
        deal = open_deals[index % len(open_deals)]
        customer = deal.person
        address = customer.emails[0].email
        when = datetime(2026, 10, 20, 9, 0, tzinfo=UTC) + timedelta(days=index * 2)
        first_id = f"demo-{index}-1@{deal.organization.domain}"
        raws[inbox.id].append(
            (
                len(raws[inbox.id]) + 1,
                _demo_mail(
                    customer.name, address, owner.name, owner.email, subject, words, when, first_id
                ),
            )
        )
        if answer:
            raws[sent.id].append(
                (
                    len(raws[sent.id]) + 1,
                    _demo_mail(
                        owner.name,
                        owner.email,
                        customer.name,
                        address,
                        f"Re: {subject}",
                        answer,
                        when + timedelta(hours=3),
                        f"demo-{index}-2@northwind-sales.test",
                        reply_to=first_id,
                    ),
                )
            )
    ctx = store.context_for(account)  # a new user's defaults: private, automatic linking
    for folder_id, items in raws.items():
        fetched = [
            store.Fetched(
                folder_id=folder_id,
                uid=prepared.uid,
                flags=[b"\\Seen"] if folder_id == sent.id or prepared.uid % 2 else [],
                dedup_key=prepared.dedup_key,
                parsed=prepared.parsed,
                raw_sha256=prepared.raw_sha256,
                size=prepared.size,
                internaldate=prepared.parsed.date,
                header_key=prepared.header_key,
            )
            for prepared in prepare_batch(str(blob_root(current_app)), items)
        ]
        store.store_batch(ctx, fetched)
    for folder in (inbox, sent):
        folder.last_seen_uid = len(raws[folder.id])
        folder.uidnext = folder.last_seen_uid + 1
        folder.server_message_count = folder.last_seen_uid
        folder.initial_sync_complete = True
        folder.state = "synced"
    # Some conversations shared with the team: teammates see them on the linked deals.
    threads = db.session.scalars(
        select(Thread).where(Thread.account_id == account.id).order_by(Thread.id)
    ).all()
    for thread in threads[::2]:
        thread.shared = True
    db.session.commit()
    return len(threads)


def _demo_mail(
    from_name: str,
    from_address: str,
    to_name: str,
    to_address: str,
    subject: str,
    text: str,
    when: datetime,
    message_id: str,
    *,
    reply_to: str | None = None,
) -> bytes:
    from email.message import EmailMessage
    from email.utils import format_datetime

    message = EmailMessage()
    message["From"] = f"{from_name} <{from_address}>"
    message["To"] = f"{to_name} <{to_address}>"
    message["Subject"] = subject
    message["Date"] = format_datetime(when)
    message["Message-ID"] = f"<{message_id}>"
    if reply_to:
        message["In-Reply-To"] = f"<{reply_to}>"
        message["References"] = f"<{reply_to}>"
    message.set_content(f"Hello {to_name.split()[0]},\n\n{text}\n\nBest,\n{from_name}\n")
    return message.as_bytes()
