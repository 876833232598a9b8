"""Addresses per RFC 5321/5322 (limits, dot-atoms, IDNA, SMTPUTF8) and the size of a message,
against a real SMTP server on loopback where the relay's answer matters."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.delivery.addresses import checked_address, cosmetic
from service.delivery.mime import Letter, compose
from service.delivery.pool import Mailer
from service.errors import InvalidRecipientError, MessageTooLarge, SmtpUtf8Unsupported
from service.metrics import Metrics
from service.settings import MailSettings, SmtpSettings
from service.testing import SmtpServer

NOW = datetime(2026, 12, 4, tzinfo=UTC)
MAIL = MailSettings(from_address="no-reply@shop.example")


def _letter(to: str, *, text: str = "t", name: str | None = "Ada") -> Letter:
    return Letter(
        key="k" * 32,
        to_address=to,
        to_name=name,
        subject="s",
        html="<p>h</p>",
        text=text,
        language="en",
    )


@pytest.mark.parametrize(
    "address",
    [
        "a" * 64 + "@example.com",
        "first.last+tag@sub.example.co.uk",
        "o'brien@example.ie",
        "x@" + ".".join(["a" * 63] * 3) + ".com",
    ],
)
def test_addresses_within_the_limits_are_taken_as_they_are(address: str) -> None:
    assert address == checked_address(address)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("a" * 65 + "@example.com", "64 octets"),
        ("é" * 33 + "@example.com", "64 octets"),  # 66 octets of UTF-8
        ("a" * 64 + "@" + ".".join(["b" * 63] * 3) + ".com", "254 octets"),
        ("a@" + ".".join(["b" * 60] * 5), "255 octets"),
        (".lead@example.com", "dot-atom"),
        ("trail.@example.com", "dot-atom"),
        ("two..dots@example.com", "dot-atom"),
        ('"quoted"@example.com', "dot-atom"),
        ("a b@example.com", "dot-atom"),
        ("a@localhost", "fully qualified"),
        ("a@-bad.example", "letters, digits and hyphens"),
        ("a@" + "b" * 64 + ".com", "letters, digits and hyphens"),
        ("a@ex ample.com", "letters, digits and hyphens"),
        ("no-at-sign", "no local part"),
        ("a\u202e@example.com", "dot-atom"),
    ],
)
def test_addresses_no_server_could_take_are_refused_with_why(address: str, why: str) -> None:
    with pytest.raises(InvalidRecipientError, match=why):
        checked_address(address)


def test_a_unicode_domain_is_idna_encoded() -> None:
    """RFC 5890 (IDNA 2008, UTS #46): the relay gets the A-label, not a refusal."""
    assert "ana@xn--bcher-kva.example" == checked_address("ana@bücher.example")
    with pytest.raises(InvalidRecipientError, match="IDN"):
        checked_address("ana@xn--zz.example\u200c")


@given(st.text(max_size=300))
def test_cosmetic_text_is_one_line_and_bounded(text: str) -> None:
    """Property: whatever goes in, what comes out has no line break, control or bidi override,
    and at most the limit."""
    shown = cosmetic(text, 50)
    assert len(shown) <= 50
    assert not any(c in shown for c in "\r\n\x00\x0b\x0c\x85\u2028\u2029\u202e\u2066")
    assert shown == shown.strip()


async def test_a_utf8_address_goes_with_smtputf8_where_the_relay_offers_it() -> None:
    """RFC 6531/6532: MAIL says SMTPUTF8 and the To header carries the address as UTF-8."""
    with SmtpServer(smtputf8=True) as server:
        settings = SmtpSettings(port=server.port, tls="none", timeout_s=5)
        async with Mailer(settings, Metrics()) as mailer:
            message = compose(_letter("josé@exámple.com"), MAIL, NOW)
            assert message.smtputf8
            assert 250 == (await mailer.send(message)).code
    (received,) = server.received
    assert ["josé@xn--exmple-qta.com"] == received.envelope_to
    # RFC 6532: the header holds the address as UTF-8, not as encoded-words.
    headers = email.message_from_string(received.data.decode(), policy=email.policy.default)
    assert "josé@xn--exmple-qta.com" == headers["To"].addresses[0].addr_spec


async def test_a_utf8_address_without_smtputf8_is_a_named_permanent_failure() -> None:
    with SmtpServer() as server:
        settings = SmtpSettings(port=server.port, tls="none", timeout_s=5)
        async with Mailer(settings, Metrics()) as mailer:
            with pytest.raises(SmtpUtf8Unsupported) as info:
                await mailer.send(compose(_letter("josé@example.com"), MAIL, NOW))
    assert "smtputf8_unsupported" == info.value.reason
    assert [] == server.received


def test_a_message_over_the_configured_size_is_too_large() -> None:
    small = MailSettings(from_address="no-reply@shop.example", max_message_bytes=65_536)
    with pytest.raises(MessageTooLarge, match=r"mail\.max_message_bytes"):
        compose(_letter("a@example.com", text="x" * 70_000), small, NOW)


async def test_a_message_over_the_relays_size_is_too_large_before_it_is_sent() -> None:
    """RFC 1870: the relay's SIZE is known from EHLO; no MAIL is sent for a message over it."""
    with SmtpServer(size=2_000) as server:
        settings = SmtpSettings(port=server.port, tls="none", timeout_s=5)
        async with Mailer(settings, Metrics()) as mailer:
            with pytest.raises(MessageTooLarge, match="SIZE"):
                await mailer.send(compose(_letter("a@example.com", text="x" * 3_000), MAIL, NOW))
            assert 250 == (await mailer.send(compose(_letter("a@example.com"), MAIL, NOW))).code
    assert 1 == len(server.received)
