"""Composition: headers, parts, deterministic Message-ID, and no header injection."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.app import Loaded
from service.errors import HeaderInjectionError, InvalidRecipientError
from service.mime import compose
from service.rendering import Rendered
from service.routing import Category, Notification, Priority, route
from service.settings import MailSettings
from tests.conftest import event_from_example, make_event

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
MAIL = MailSettings(from_address="no-reply@shop.example", from_name="Shop")
PARTS = Rendered(subject="Votre commande — reçue", html="<p>é</p>", text="é\n", locale="fr")


def _n(loaded: Loaded, **recipient: object):
    (n,) = route(event_from_example(loaded, "order.confirmed", **recipient), loaded.table)
    return n


def _bare(name: str | None, key: str) -> Notification:
    """A notification built by hand, for properties over arbitrary names."""
    event = make_event("order.confirmed", {}, name=name)
    return Notification(
        type="t",
        template="t",
        category=Category.TRANSACTIONAL,
        priority=Priority.HIGH,
        recipient=event.recipient,
        idempotency_key=key,
        condition_met=True,
        utm={},
        event=event,
    )


def _parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def test_message_parses_back_with_every_header_and_both_parts(loaded: Loaded) -> None:
    n = _n(loaded)
    m = compose(n, PARTS, MAIL, NOW)
    msg = _parse(m.data)
    assert "Shop <no-reply@shop.example>" == msg["From"]
    assert "Camille Martin <camille.martin@example.com>" == msg["To"]
    assert "Votre commande — reçue" == msg["Subject"]
    assert f"<{n.idempotency_key}@shop.example>" == msg["Message-ID"] == m.message_id
    assert "fr" == msg["Content-Language"]
    assert "auto-generated" == msg["Auto-Submitted"]
    assert "multipart/alternative" == msg.get_content_type()
    assert "é\n" == msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "<p>é</p>" in msg.get_body(("html",)).get_content()
    assert all(line.endswith(b"\r") or not line for line in m.data.split(b"\n")[:-1])
    assert max(len(line) for line in m.data.split(b"\r\n")) <= 998  # RFC 5322 2.1.1


def test_message_id_is_deterministic(loaded: Loaded) -> None:
    """A redelivered notification carries the same Message-ID, so duplicates are detectable."""
    a = compose(_n(loaded), PARTS, MAIL, NOW)
    b = compose(_n(loaded), PARTS, MAIL, datetime(2027, 1, 1, tzinfo=UTC))
    assert a.message_id == b.message_id


@pytest.mark.parametrize("name", ["Eve\r\nBcc: x@example.com", "Eve\nX-Evil: 1", "Eve\x00"])
def test_display_name_with_control_characters_is_refused(loaded: Loaded, name: str) -> None:
    with pytest.raises(HeaderInjectionError):
        compose(_n(loaded, display_name=name), PARTS, MAIL, NOW)


@pytest.mark.parametrize(
    "address", ["a@b.example\r\nBcc: c@d.example", "not-an-address", "a b@example.com", "<a@b>"]
)
def test_invalid_recipient_address_is_a_permanent_failure(loaded: Loaded, address: str) -> None:
    with pytest.raises(InvalidRecipientError):
        compose(_n(loaded, email=address), PARTS, MAIL, NOW)


@given(st.text(max_size=80))
def test_no_display_name_can_add_a_header(name: str) -> None:
    """Property: whatever the name, the message has exactly the headers Herald wrote."""
    n = _bare(name, "k" * 32)
    try:
        m = compose(n, PARTS, MAIL, NOW)
    except HeaderInjectionError:
        assert any(ord(c) < 32 or ord(c) == 127 for c in name)
        return
    msg = _parse(m.data)
    expected = {
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Language",
        "Auto-Submitted",
    }
    assert expected == set(msg.keys())
    assert "ada@example.com" == msg["To"].addresses[0].addr_spec


def test_optional_mail_carries_one_click_unsubscribe(loaded: Loaded) -> None:
    """RFC 8058: List-Unsubscribe with an https URL and List-Unsubscribe-Post; only when set."""
    parts = Rendered(
        subject="s",
        html="<p>h</p>",
        text="t\n",
        locale="en",
        unsubscribe_url="https://shop.example/unsubscribe?user=u1&list=x",
    )
    msg = _parse(compose(_n(loaded), parts, MAIL, NOW).data)
    assert "<https://shop.example/unsubscribe?user=u1&list=x>" == msg["List-Unsubscribe"]
    assert "List-Unsubscribe=One-Click" == msg["List-Unsubscribe-Post"]
    plain = _parse(compose(_n(loaded), PARTS, MAIL, NOW).data)
    assert plain["List-Unsubscribe"] is None


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00"),
    max_size=400,
)
_line = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=120)


@settings(max_examples=200, deadline=None)
@given(subject=_line, name=st.one_of(st.none(), _line), text=_text, html=_text)
def test_message_parses_back_to_what_was_rendered(
    subject: str, name: str | None, text: str, html: str
) -> None:
    """Property (RFC 5322/2045/2047): whatever the subject, name and bodies, the standard
    library's parser reads back exactly those headers and parts, and no line exceeds 998."""
    n = _bare(name, "0123456789abcdef" * 2)
    subject = subject.strip() or "s"  # the renderer strips subjects
    m = compose(n, Rendered(subject=subject, html=html, text=text, locale="fr"), MAIL, NOW)
    msg = _parse(m.data)
    assert subject == msg["Subject"]
    assert (name or "").strip() == msg["To"].addresses[0].display_name
    assert "ada@example.com" == msg["To"].addresses[0].addr_spec
    assert text == msg.get_body(("plain",)).get_content()
    assert html == msg.get_body(("html",)).get_content()
    assert all(len(line) <= 998 for line in m.data.split(b"\r\n"))
    assert not any(line.startswith(b".") for line in m.data.split(b"\r\n"))
