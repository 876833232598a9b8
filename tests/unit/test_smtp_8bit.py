"""8BITMIME over real SMTP (aiosmtpd on loopback): raw UTF-8 where offered, 7 bits where not."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from service.app import Loaded
from service.delivery.mime import Email, compose, seven_bit
from service.delivery.pool import Mailer
from service.delivery.smtp import _on_the_wire
from service.flow.messages import letter_for
from service.metrics import Metrics
from service.render.renderer import Rendered
from service.routing import Notification, route
from service.settings import MailSettings, SmtpSettings
from service.testing import RecordingHandler, free_port
from tests.conftest import body_part, event_from_example

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
MAIL = MailSettings(from_address="no-reply@shop.example", from_name="Shop")


def _compose(n: Notification, r: Rendered, mail: MailSettings, now: datetime) -> Email:
    return compose(letter_for(n, r), mail, now)


DOTS = "Détails :\n.une ligne qui commence par un point\n.\n..deux\nfin\n"
"""Lines that DATA must dot-stuff (RFC 5321 4.5.2), one of them the terminator's look-alike."""


@dataclass
class MailOptionsHandler(RecordingHandler):
    """The recording handler, keeping the parameters of every MAIL command too."""

    mail_options: list[list[str]] = field(default_factory=list)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.mail_options.append(options)
        envelope.mail_from = address  # what aiosmtpd does itself when there is no hook
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"


@contextmanager
def _server(*, pipelining: bool, eight_bit_mime: bool) -> Iterator[tuple[MailOptionsHandler, int]]:
    """aiosmtpd offers 8BITMIME; with `decode_data` it is a 7-bit server: no 8BITMIME in its
    EHLO reply, 555 to a BODY= parameter, 500 to a byte over 127 in DATA."""
    handler = MailOptionsHandler(pipelining=pipelining)
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, decode_data=not eight_bit_mime
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def _settings(port: int) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=port, tls="none", timeout_s=5, max_attempts=1)


def _composed(loaded: Loaded, **parts: str) -> tuple[Email, Rendered]:
    """The order confirmation as rendered, with `parts` replacing some of it."""
    (n,) = route(event_from_example(loaded, "order.confirmed"), loaded.table)
    r = dataclasses.replace(loaded.renderer.render(n), **parts)
    return _compose(n, r, MAIL, NOW), r


def _parts(data: bytes) -> list[str]:
    """Both parts as the standard library reads them; an unencoded part keeps the CRLFs it
    was sent with, which `compose` made from the rendered LFs."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    texts = []
    for subtype in ("plain", "html"):
        part = body_part(msg, subtype)
        text = part.get_content()
        base64 = part["Content-Transfer-Encoding"] == "base64"
        texts.append(text if base64 else text.replace("\r\n", "\n"))
    return texts


def test_dot_lines_of_an_unencoded_part_are_doubled_on_the_wire(loaded: Loaded) -> None:
    """RFC 5321 4.5.2: a body line starting with a dot goes with one more; "." alone too."""
    m, _ = _composed(loaded, text=DOTS)
    wire = _on_the_wire(m.data)
    assert b"\r\n..une ligne qui commence par un point\r\n..\r\n...deux\r\n" in wire
    assert m.data == wire[:-3].replace(b"\r\n..", b"\r\n.")


@pytest.mark.parametrize("pipelining", [False, True], ids=["sequential", "pipelining"])
async def test_8bit_mail_says_so_and_arrives_as_composed(loaded: Loaded, pipelining: bool) -> None:
    """RFC 6152: to a server offering 8BITMIME, a message with an 8bit part goes as composed
    with MAIL FROM:<…> BODY=8BITMIME, and arrives byte for byte; 7-bit mail goes without."""
    m, r = _composed(loaded, text=DOTS)
    ascii_only, _ = _composed(loaded, text="text\n", html="<p>html</p>\n")
    assert m.eight_bit
    assert not ascii_only.eight_bit
    with _server(pipelining=pipelining, eight_bit_mime=True) as (handler, port):
        async with Mailer(_settings(port), Metrics()) as mailer:
            assert 250 == (await mailer.send(m)).code
            assert 250 == (await mailer.send(ascii_only)).code
            assert [pipelining] == [c.pipelining for c in mailer._idle]
    assert [["BODY=8BITMIME"], []] == handler.mail_options
    assert [m.data, ascii_only.data] == [received.data for received in handler.received]
    assert [r.text, r.html] == _parts(handler.received[0].data)


@pytest.mark.parametrize("pipelining", [False, True], ids=["sequential", "pipelining"])
async def test_8bit_mail_to_a_7bit_server_goes_as_base64(loaded: Loaded, pipelining: bool) -> None:
    """RFC 6152 3: a server without 8BITMIME gets no BODY parameter and the 8bit parts in
    base64; what arrives is all ASCII and reads back as rendered. 7-bit mail goes as is."""
    m, r = _composed(loaded, text=DOTS)
    ascii_only, _ = _composed(loaded, text="text\n", html="<p>html</p>\n")
    with _server(pipelining=pipelining, eight_bit_mime=False) as (handler, port):
        async with Mailer(_settings(port), Metrics()) as mailer:
            assert 250 == (await mailer.send(m)).code
            assert 250 == (await mailer.send(ascii_only)).code
            assert [pipelining] == [c.pipelining for c in mailer._idle]
    assert [[], []] == handler.mail_options
    received = handler.received[0].data
    assert received.isascii()
    assert seven_bit(m).data == received
    assert [r.text, r.html] == _parts(received)
    assert ascii_only.data == handler.received[1].data  # 7-bit mail needs nothing
