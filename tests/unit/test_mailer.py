"""Delivery over real SMTP (aiosmtpd on loopback): acceptance, reply classes, the breaker,
RFC 1047. Retrying is the flow's (tests/unit/test_flow.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.delivery.mime import Email
from service.delivery.pool import Mailer
from service.delivery.slots import Slots
from service.delivery.smtp import _on_the_wire, classify, enhanced_code
from service.errors import (
    DeliveryUnknownError,
    PermanentDeliveryError,
    SmtpUnavailable,
    TransientDeliveryError,
)
from service.metrics import Metrics
from service.settings import SmtpSettings
from service.testing import SmtpServer, TlsSmtpServer


@pytest.fixture(params=[False, True], ids=["sequential", "pipelining"])
def server(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """Every exchange both ways: command by command, and pipelined (RFC 2920)."""
    with SmtpServer(pipelining=request.param) as s:
        yield s


def _settings(server: SmtpServer, **kw: object) -> SmtpSettings:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "tls": "none",
        "timeout_s": 5,
        "retry_backoff_ms": 1,
        "pool_size": 2,
    }
    base.update(kw)
    return SmtpSettings(**base)


def _email(to: str, n: int = 0) -> Email:
    data = (
        f"From: a@example.com\r\nTo: {to}\r\nSubject: t{n}\r\nMessage-ID: <{n}@x>\r\n\r\nbody\r\n"
    ).encode()
    return Email(message_id=f"<{n}@x>", envelope_from="a@example.com", envelope_to=to, data=data)


def test_reply_classification() -> None:
    """RFC 5321: 4xx transient, 5xx permanent; RFC 3463 enhanced code kept."""
    assert isinstance(classify(451, "4.3.0 busy"), TransientDeliveryError)
    err = classify(550, "5.1.1 no such user")
    assert isinstance(err, PermanentDeliveryError)
    assert ("5.1.1", 550) == (err.enhanced_code, err.code)
    assert enhanced_code("no code here") is None


async def test_accepted_over_a_pooled_connection(server: SmtpServer) -> None:
    """Several messages reuse the pool and each is received intact."""
    metrics = Metrics()
    async with Mailer(_settings(server), metrics) as mailer:
        results = [await mailer.send(_email(f"user{i}@example.com", i)) for i in range(5)]
        # One connection, reused; pipelined exactly when the server offers it.
        assert [server.handler.pipelining] == [c.pipelining for c in mailer._idle]
    assert [250] * 5 == [r.code for r in results]
    assert "2.0.0" == results[0].enhanced_code
    assert [f"user{i}@example.com" for i in range(5)] == [r.envelope_to[0] for r in server.received]
    assert 5.0 == metrics.smtp_attempts.labels("accepted", "2xx")._value.get()


async def test_refusals_carry_the_reply_and_their_class(server: SmtpServer) -> None:
    """A 550 to RCPT is permanent, a 451 transient; each is the message's, not the server's."""
    async with Mailer(_settings(server), Metrics()) as mailer:
        with pytest.raises(PermanentDeliveryError) as perm:
            await mailer.send(_email("perm@example.com"))
        with pytest.raises(TransientDeliveryError) as temp:
            await mailer.send(_email("temp@example.com"))
        assert not mailer.breaker.is_open
    assert (550, "5.1.1", False) == (
        perm.value.code,
        perm.value.enhanced_code,
        perm.value.server_wide,
    )
    assert (451, False) == (temp.value.code, temp.value.server_wide)
    assert 2 == server.handler.rcpt_attempts


async def test_connection_lost_after_data_is_unknown_and_not_retried(server: SmtpServer) -> None:
    """RFC 1047: the server may have the message; a resend could duplicate it."""
    async with Mailer(_settings(server, max_attempts=3), Metrics()) as mailer:
        with pytest.raises(DeliveryUnknownError):
            await mailer.send(_email("drop@example.com"))
        ok = await mailer.send(_email("after@example.com", 1))  # the pool recovers
    assert 250 == ok.code


async def test_warm_opens_the_pool_before_the_first_mail(server: SmtpServer) -> None:
    """Every connection of the pool is open before any mail, and mail then opens none."""
    async with Mailer(_settings(server, pool_size=3), Metrics()) as mailer:
        assert 3 == await mailer.warm()
        assert 3 == server.handler.ehlos
        results = await asyncio.gather(
            *(mailer.send(_email(f"user{i}@example.com", i)) for i in range(6))
        )
        assert [250] * 6 == [r.code for r in results]
        assert 3 == server.handler.ehlos


async def test_warming_in_the_background_is_stopped_by_close(server: SmtpServer) -> None:
    """Closing right after start-up stops the warm-up; nothing is left open or raised."""
    mailer = Mailer(_settings(server, pool_size=3), Metrics())
    mailer.warm_in_background()
    await mailer.close()
    assert mailer._warming is not None
    assert mailer._warming.done()
    assert [] == mailer._idle


async def test_warm_with_the_relay_out_of_reach_opens_nothing_and_leaves_the_breaker_shut() -> None:
    """Start-up goes on; the first mail connects again, and the breaker judges then."""
    from service.testing import free_port

    s = SmtpSettings(
        host="127.0.0.1", port=free_port(), tls="none", timeout_s=2, breaker_threshold=1
    )
    async with Mailer(s, Metrics()) as mailer:
        assert 0 == await mailer.warm()
        assert [] == mailer._idle
        assert not mailer.breaker.is_open


async def test_server_down_opens_the_breaker() -> None:
    """Refused connections are server-wide failures; after `threshold` of them the breaker
    opens and sends fail fast until the cool-down lets a probe through."""
    from service.testing import free_port

    port = free_port()
    s = SmtpSettings(
        host="127.0.0.1",
        port=port,
        tls="none",
        timeout_s=2,
        max_attempts=2,
        retry_backoff_ms=1,
        breaker_threshold=3,
        breaker_cooldown_s=0.3,
    )
    metrics = Metrics()
    async with Mailer(s, metrics) as mailer:
        for _ in range(3):
            with pytest.raises(TransientDeliveryError, match="connect") as refused:
                await mailer.send(_email("a@example.com"))
            assert refused.value.server_wide
        with pytest.raises(SmtpUnavailable, match="breaker is open: connect"):
            await mailer.send(_email("a@example.com"))
        assert mailer.breaker.is_open
        assert 3.0 == metrics.smtp_attempts.labels("transient", "none")._value.get()
        assert 1.0 == metrics.breaker_open._value.get()
        with SmtpServer(port=port):  # the server comes back
            await mailer.breaker.wait()
            ok = await mailer.send(_email("a@example.com"))
        assert 250 == ok.code
        assert not mailer.breaker.is_open
        assert 0.0 == metrics.breaker_open._value.get()


async def test_starttls_is_verified_by_default(tmp_path: Path) -> None:
    """A certificate from an unknown CA is refused unless that CA is configured."""
    with TlsSmtpServer(tmp_path) as server:
        strict = SmtpSettings(
            host="127.0.0.1", port=server.port, tls="starttls", timeout_s=5, max_attempts=1
        )
        async with Mailer(strict, Metrics()) as mailer:
            with pytest.raises(TransientDeliveryError, match=r"(?i)certificate") as refused:
                await mailer.send(_email("a@example.com"))
            assert refused.value.server_wide
        # `with` gives a SmtpServer: SmtpServer.__enter__ is annotated with its class, not Self.
        trusting = strict.model_copy(update={"ca_file": cast(TlsSmtpServer, server).ca_file})
        async with Mailer(trusting, Metrics()) as mailer:
            ok = await mailer.send(_email("a@example.com"))
    assert 250 == ok.code
    assert 1 == len(server.received)


async def test_plain_connection_refused_by_a_server_requiring_tls(tmp_path: Path) -> None:
    """`tls=none` against a server that requires STARTTLS fails at MAIL: a 5xx, permanent."""
    with TlsSmtpServer(tmp_path) as server:
        s = SmtpSettings(host="127.0.0.1", port=server.port, tls="none", timeout_s=5)
        async with Mailer(s, Metrics()) as mailer:
            with pytest.raises(PermanentDeliveryError) as info:
                await mailer.send(_email("a@example.com"))
    assert 530 == info.value.code


async def test_slots_serve_express_first_and_keep_reserved_ones_for_it() -> None:
    """Bulk may hold size - reserved slots; a waiting express acquirer goes before every
    waiting bulk one; a cancelled waiter leaves no slot behind."""
    slots = Slots(3, reserved=1)
    order: list[str] = []

    async def use(name: str, express: bool, hold: asyncio.Event) -> None:
        await slots.acquire(express)
        order.append(name)
        await hold.wait()
        slots.release(express)

    hold = asyncio.Event()
    bulk = [asyncio.create_task(use(f"b{i}", False, hold)) for i in range(4)]
    await asyncio.sleep(0)
    assert ["b0", "b1"] == order  # the third slot is reserved
    express = [asyncio.create_task(use(f"e{i}", True, hold)) for i in range(2)]
    await asyncio.sleep(0)
    assert ["b0", "b1", "e0"] == order  # e0 got the reserved slot
    assert 3 == slots.in_use
    gone = asyncio.create_task(slots.acquire(False))
    await asyncio.sleep(0)
    gone.cancel()
    hold.set()
    await asyncio.gather(*bulk, *express)
    assert ["b0", "b1", "e0", "e1", "b2", "b3"] == order  # e1 overtook the waiting b2, b3
    assert 0 == slots.in_use


async def test_body_lines_are_carried_exactly_as_composed(server: SmtpServer) -> None:
    """DATA's own rules, applied by the mailer: a line starting with a dot (one, or the
    terminator's look-alike) is doubled on the wire and arrives as written; bare LF or CR
    line ends go out as CRLF."""
    body = b".leading dot\r\n..two dots\r\n.\r\nmiddle\nbare LF\rbare CR\r\nlast"
    head = b"From: a@example.com\r\nTo: dots@example.com\r\nSubject: dots\r\n\r\n"
    email = Email(
        message_id="<d@x>",
        envelope_from="a@example.com",
        envelope_to="dots@example.com",
        data=head + body,
    )
    async with Mailer(_settings(server), Metrics()) as mailer:
        assert 250 == (await mailer.send(email)).code
        assert 250 == (await mailer.send(_email("after@example.com", 1))).code  # still in step
    received = server.received[0].data.replace(b"\r\n", b"\n")
    expected = (head + body).replace(b"\r\n", b"\n").replace(b"\r", b"\n") + b"\n"
    assert expected == received
    assert ["after@example.com"] == server.received[1].envelope_to


@given(
    st.lists(st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"\xc3\xa9"]), min_size=1)
)
def test_on_the_wire_is_dot_stuffed_crlf_lines(pieces: list[bytes]) -> None:
    """Property (RFC 5321 4.5.2): whatever the line ends, DATA carries each line with CRLF,
    one more dot before a line starting with one, and the final dot."""
    data = b"".join(pieces)
    lines = re.split(rb"\r\n|\r|\n", data)
    if not lines[-1]:
        lines.pop()  # a line end at the end of the data ends the last line
    expected = b"".join(b"." * line.startswith(b".") + line + b"\r\n" for line in lines)
    assert expected + b".\r\n" == _on_the_wire(data)


class ScriptedServer:
    """A few lines of asyncio speaking just enough SMTP, for replies aiosmtpd cannot give
    (it has no hook before its 354, nor for MAIL's reply class). `None` hangs up."""

    def __init__(self, replies: dict[bytes, bytes | None], *, pipelining: bool) -> None:
        ehlo = b"250-ok\r\n250 PIPELINING" if pipelining else b"250 ok"
        self.replies = {b"EHLO": ehlo, b"MAIL": b"250 ok", b"RCPT": b"250 ok", **replies}
        self.commands: list[bytes] = []
        self.ended = asyncio.Event()
        self.port = 0

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test\r\n")
        while line := await reader.readline():
            verb = line.split()[0].upper()
            self.commands.append(verb)
            reply = self.replies.get(verb, b"221 bye")
            if reply is None:
                break  # hang up instead of answering
            writer.write(reply + b"\r\n")
        writer.close()
        await writer.wait_closed()
        self.ended.set()

    async def serve(self) -> asyncio.Server:
        server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server


@pytest.mark.parametrize("pipelining", [False, True], ids=["sequential", "pipelining"])
@pytest.mark.parametrize("answer", [b"451 4.3.0 not now", None], ids=["451", "hang-up"])
async def test_data_command_failing_is_an_envelope_failure_not_unknown(
    answer: bytes | None, pipelining: bool
) -> None:
    """Nothing of the message has left before the 354: a 4xx to the DATA command itself, or
    the connection closed instead of a reply, is transient, never the RFC 1047 window."""
    script = ScriptedServer({b"DATA": answer}, pipelining=pipelining)
    async with await script.serve():
        settings = SmtpSettings(port=script.port, tls="none", timeout_s=5, max_attempts=1)
        async with Mailer(settings, Metrics()) as mailer:
            with pytest.raises(TransientDeliveryError) as info:
                await mailer.send(_email("refused@example.com"))
            await asyncio.wait_for(script.ended.wait(), 5)
    assert not isinstance(info.value, DeliveryUnknownError)
    assert [b"EHLO", b"MAIL", b"RCPT", b"DATA"] == script.commands
    if answer is not None:
        assert (451, "4.3.0") == (info.value.code, info.value.enhanced_code)


@pytest.mark.parametrize("pipelining", [False, True], ids=["sequential", "pipelining"])
async def test_421_to_mail_feeds_the_breaker(pipelining: bool) -> None:
    """RFC 5321 3.8: 421 is the service going away, whichever command it answers. As the
    first command on a fresh connection it must still count against the server."""
    script = ScriptedServer({b"MAIL": b"421 4.3.2 shutting down"}, pipelining=pipelining)
    async with await script.serve():
        settings = SmtpSettings(
            port=script.port, tls="none", timeout_s=5, max_attempts=3, breaker_threshold=1
        )
        async with Mailer(settings, Metrics()) as mailer:
            with pytest.raises(TransientDeliveryError) as info:
                await mailer.send(_email("anyone@example.com"))
            assert info.value.server_wide
            assert mailer.breaker.is_open
            with pytest.raises(SmtpUnavailable):
                await mailer.send(_email("anyone@example.com"))
            await asyncio.wait_for(script.ended.wait(), 5)
    assert 1 == script.commands.count(b"MAIL")  # the open breaker stopped the second


async def test_a_waiter_cancelled_after_a_release_passed_it_leaves_cleanly() -> None:
    """Found by the rebalance scenario: a revocation cancels waiting records, and a release
    that runs before their tasks resume drops their futures from the queue first."""
    slots = Slots(1)
    await slots.acquire(False)
    waiter = asyncio.create_task(slots.acquire(False))
    await asyncio.sleep(0)
    waiter.cancel()  # its future is cancelled now; the task resumes later
    slots.release(False)  # pops the cancelled future, grants nobody
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert 0 == slots.in_use
    await slots.acquire(False)  # the slot is free for the next one
    assert 1 == slots.in_use
