"""The aiosmtplib internals service/delivery/smtp.py relies on, pinned against a real aiosmtpd
server over TCP, in plain text and after STARTTLS: an aiosmtplib upgrade that changes one fails
here first, with a message naming it.

Beyond the documented API, `Connection` uses `SMTP.transport`, which it hands to its own reply
reader with `transport.set_protocol()` when the server offers PIPELINING; `SMTP.protocol`, whose
`write()` and `read_response(timeout=)` carry the message body; `SMTP.supports_extension()`; and
`SMTP.is_ehlo_or_helo_needed`, which `Mailer` reads after `connect()`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import aiosmtplib
import pytest

from service.testing import SmtpServer, TlsSmtpServer

TLS = pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])


def pin(condition: object, what: str) -> None:
    """An assertion whose message says which internal moved, and who depends on it."""
    assert condition, (
        f"aiosmtplib {aiosmtplib.__version__}: {what} (service/delivery/smtp.py relies on it)"
    )


@asynccontextmanager
async def connected(
    tmp_path: Path, *, tls: bool
) -> AsyncIterator[tuple[aiosmtplib.SMTP, SmtpServer]]:
    """A client connected the way `Mailer` connects one, to a server offering PIPELINING."""
    server = TlsSmtpServer(tmp_path) if tls else SmtpServer()
    server.handler.pipelining = True
    with server:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=server.port,
            timeout=5,
            use_tls=False,
            start_tls=tls,
            cert_bundle=str(cast(TlsSmtpServer, server).ca_file) if tls else None,
        )
        await client.connect()
        try:
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
            yield client, server
        finally:
            client.close()


class Recorder(asyncio.Protocol):
    """Stands in for smtp.py's `_Replies`: what arrives once it owns the transport."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data.extend(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def until(predicate: object, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not callable(predicate) or not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_is_ehlo_or_helo_needed_says_whether_connect_greeted(tmp_path: Path) -> None:
    """A property: true after a connect() with `start_tls=False` (no EHLO sent), false after
    ehlo(), and false after a STARTTLS connect(), which sends EHLO itself."""
    pin(
        isinstance(inspect.getattr_static(aiosmtplib.SMTP, "is_ehlo_or_helo_needed"), property),
        "SMTP.is_ehlo_or_helo_needed is a property",
    )
    with SmtpServer() as server:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=5, start_tls=False)
        await client.connect()
        try:
            pin(client.is_ehlo_or_helo_needed is True, "true after connect(start_tls=False)")
            await client.ehlo()
            pin(client.is_ehlo_or_helo_needed is False, "false after ehlo()")
        finally:
            client.close()
    async with connected(tmp_path, tls=True) as (client, _):
        pin(client.is_ehlo_or_helo_needed is False, "false after a STARTTLS connect()")


@TLS
async def test_supports_extension_reads_the_ehlo_reply(tmp_path: Path, tls: bool) -> None:
    """One positional name, case-insensitive, answered from the last EHLO reply."""
    params = list(inspect.signature(aiosmtplib.SMTP.supports_extension).parameters.values())
    pin(
        [inspect.Parameter.POSITIONAL_ONLY] == [p.kind for p in params[1:]],
        "SMTP.supports_extension(extension, /) takes one positional argument",
    )
    async with connected(tmp_path, tls=tls) as (client, _):
        pin(client.supports_extension("pipelining"), "supports_extension('pipelining')")
        pin(client.supports_extension("PIPELINING"), "supports_extension is case-insensitive")
        pin(client.supports_extension("8bitmime"), "supports_extension('8bitmime')")
        pin(not client.supports_extension("chunking"), "an extension not offered is false")


@TLS
async def test_transport_can_be_handed_to_another_protocol(tmp_path: Path, tls: bool) -> None:
    """`SMTP.transport` is the live (after STARTTLS, the TLS) asyncio transport: once
    `set_protocol()` hands it over, pipelined replies and the close reach the new protocol."""
    async with connected(tmp_path, tls=tls) as (client, _):
        transport = client.transport
        pin(isinstance(transport, asyncio.Transport), "SMTP.transport is an asyncio.Transport")
        assert isinstance(transport, asyncio.Transport)
        pin(
            (transport.get_extra_info("ssl_object") is not None) == tls,
            "SMTP.transport is the TLS transport after STARTTLS",
        )
        recorder = Recorder()
        transport.set_protocol(recorder)
        transport.write(b"NOOP\r\nQUIT\r\n")
        await until(lambda: recorder.lost, "the server to close after QUIT")
        pin(bytes(recorder.data).startswith(b"250"), "replies go to the protocol set")
        pin(b"221" in recorder.data, "both pipelined replies arrive")


async def test_close_closes_the_transport_after_it_was_handed_over(tmp_path: Path) -> None:
    """`SMTP.close()` still closes the transport `Connection.close()` gave away."""
    async with connected(tmp_path, tls=False) as (client, _):
        transport = client.transport
        assert isinstance(transport, asyncio.Transport)
        transport.set_protocol(Recorder())
        client.close()
        pin(transport.is_closing(), "SMTP.close() closes SMTP.transport")
        pin(client.transport is None and client.protocol is None, "close() forgets both")


@TLS
async def test_protocol_write_and_read_response_carry_the_body(tmp_path: Path, tls: bool) -> None:
    """After DATA's 354, `protocol.write()` of the wire-ready body and, with no await between,
    `protocol.read_response(timeout=)` give the server's reply to it: it is not dropped as
    unsolicited."""
    params = inspect.signature(aiosmtplib.protocol.SMTPProtocol.read_response).parameters
    pin("timeout" in params, "SMTPProtocol.read_response(timeout=...)")
    async with connected(tmp_path, tls=tls) as (client, server):
        await client.mail("a@example.com")
        await client.rcpt("b@example.com")
        start = await client.execute_command(b"DATA")
        pin(354 == start.code, "execute_command(b'DATA') returns the 354 reply")
        protocol = client.protocol
        pin(protocol is not None, "SMTP.protocol is set while connected")
        assert protocol is not None
        protocol.write(b"Subject: contract\r\n\r\n..dot-stuffed line\r\n.\r\n")
        try:
            reply = await protocol.read_response(timeout=5)
        except aiosmtplib.SMTPTimeoutError:
            pin(False, "read_response() after write() returns the reply, not drops it")
            raise
        pin(isinstance(reply, aiosmtplib.SMTPResponse), "read_response returns an SMTPResponse")
        pin(250 == reply.code, f"the reply to the body is read, got {reply}")
        assert 1 == len(server.received)
        assert ".dot-stuffed line" in server.received[0].message.get_payload()


async def test_read_response_times_out_and_a_lost_connection_raises(tmp_path: Path) -> None:
    """A read with no reply coming raises SMTPTimeoutError; a connection the server closes
    after the body, before its reply (RFC 1047), raises SMTPServerDisconnected from
    read_response(), and from write() after it."""
    async with connected(tmp_path, tls=False) as (client, _):
        protocol = client.protocol
        assert protocol is not None
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await protocol.read_response(timeout=0.1)
        await client.mail("a@example.com")
        await client.rcpt("drop@example.com")  # the test server closes after this body
        assert 354 == (await client.execute_command(b"DATA")).code
        protocol.write(b"Subject: lost\r\n\r\nbody\r\n.\r\n")
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await protocol.read_response(timeout=5)
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            protocol.write(b"NOOP\r\n")
