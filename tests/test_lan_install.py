"""A LAN install: single-label mail domains and local IMAP bridges on unusual ports."""

from __future__ import annotations

import pytest
from sqlalchemy import select

import config
from extensions import db
from mailsync import imap
from models import Person, User
from services.addresses import is_valid_address
from services.errors import ValidationError
from services.linking_rules import normalize_block_entry
from tests.conftest import PASSWORD

LOCAL_ADDRESSES = ["alice@localhost", "bob@intranet", "ops@mail.office.lan", "x.y+z@host-1"]
NOT_ADDRESSES = [
    "",
    "bob",
    "bob@",
    "@intranet",
    "a b@intranet",
    "a@b@c",
    "a@.lan",
    "a@lan.",
    "a@x..y",
]


@pytest.mark.parametrize("address", LOCAL_ADDRESSES)
def test_local_addresses_are_addresses(address):
    assert is_valid_address(address)


@pytest.mark.parametrize("address", NOT_ADDRESSES)
def test_malformed_addresses_are_refused(address):
    assert not is_valid_address(address)


def test_first_admin_with_a_localhost_address(client):
    response = client.post(
        "/setup", data={"name": "Alice", "email": "Alice@localhost", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert db.session.scalar(select(User.email)) == "alice@localhost"


def test_person_at_a_single_label_domain(admin_client):
    response = admin_client.post("/persons/", data={"name": "Bob", "emails": ["bob@intranet"]})
    assert response.status_code in (302, 303)
    person = db.session.scalar(select(Person))
    assert person.primary_email == "bob@intranet"


def test_blocking_a_local_address_and_domain(admin_client):
    for entry, stored in (("noise@intranet", "noise@intranet"), ("@intranet", "@intranet")):
        response = admin_client.post("/settings/blocked/", data={"entry": entry})
        assert response.status_code == 200
        assert stored in response.get_data(as_text=True)
    assert normalize_block_entry("*@Localhost") == "@localhost"
    with pytest.raises(ValidationError):
        normalize_block_entry("@")


@pytest.mark.parametrize(
    ("value", "ports"),
    [("1143", (1143,)), ("993,143, 1143", (993, 143, 1143)), ("any", None), ("ANY", None)],
)
def test_allowed_ports_from_the_environment(monkeypatch, value, ports):
    monkeypatch.setenv("THREADLINE_MAIL_ALLOWED_PORTS", value)
    overrides = config.environment_overrides()
    assert overrides["MAIL_ALLOWED_PORTS"] == ports
    allowed = imap.allowed_ports(overrides)
    assert allowed is None if ports is None else allowed == frozenset(ports)


@pytest.mark.parametrize("value", ["", "imap", "993;143", "0", "70000"])
def test_a_bad_port_list_stops_start_up_with_the_setting_named(monkeypatch, value):
    monkeypatch.setenv("THREADLINE_MAIL_ALLOWED_PORTS", value)
    with pytest.raises(ValueError, match="THREADLINE_MAIL_ALLOWED_PORTS"):
        config.environment_overrides()


def test_a_bridge_port_allowed_from_the_environment_connects(monkeypatch, dovecot, mail_user):
    """Proton Mail Bridge / DavMail listen on 1143: the environment lets such a port through."""
    monkeypatch.setenv("THREADLINE_MAIL_ALLOWED_PORTS", f"993,143,{dovecot.ssl_port}")
    allowed = imap.allowed_ports(config.environment_overrides())
    settings = imap.ConnectionSettings(
        host="127.0.0.1",
        port=dovecot.ssl_port,
        security="ssl",
        username=mail_user.email,
        password=mail_user.password,
        ca_cert_pem=dovecot.ca_file.read_text(),
        timeout=10,
    )
    imap.safe_logout(imap.connect(settings, allowed_ports=allowed))
    with pytest.raises(imap.MailConnectionError, match="THREADLINE_MAIL_ALLOWED_PORTS"):
        imap.connect(settings, allowed_ports=frozenset({993, 143}))
