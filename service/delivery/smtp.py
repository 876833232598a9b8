"""The SMTP conversation on one pooled connection, and what its replies mean.

Reply codes are classified once, in `map_smtp_errors`: 4xx and lost connections are transient,
5xx permanent, and a connection lost after the message body was handed over is *unknown*
(RFC 1047): the server may have accepted it, so it is never resent blindly. aiosmtplib opens
the connection (TLS, AUTH, EHLO); transactions are written here, pipelined where the server
allows it. Mail with a raw UTF-8 part says BODY=8BITMIME where the server offers it, and
is re-encoded to 7 bits where it does not (RFC 6152).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import aiosmtplib

from service.delivery.mime import Email, crlf_lines, seven_bit
from service.errors import (
    DeliveryError,
    DeliveryUnknownError,
    MessageTooLarge,
    PermanentDeliveryError,
    SmtpUtf8Unsupported,
    StaleConnection,
    TransientDeliveryError,
)

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\b")


def enhanced_code(text: str) -> str | None:
    """RFC 3463 status at the start of a reply text, e.g. `5.1.1`."""
    m = _ENHANCED.match(text.strip())
    return m.group(1) if m else None


def classify(code: int, text: str) -> DeliveryError:
    """4xx is worth another try later; anything else that is not 2xx is final (RFC 5321 4.2.1)."""
    cls = TransientDeliveryError if 400 <= code < 500 else PermanentDeliveryError
    return cls(
        f"SMTP {code}",
        code=code,
        enhanced_code=enhanced_code(text),
        text=text[:500],
        server_wide=code == 421,  # RFC 5321 3.8: the service is shutting down
    )


@contextmanager
def map_smtp_errors(phase: str) -> Iterator[None]:
    """Translate aiosmtplib's exceptions into ours, once."""
    try:
        yield
    except aiosmtplib.SMTPResponseException as exc:
        if phase != "connect":
            raise classify(exc.code, exc.message) from exc
        # Greeting refused or AUTH failed: the server or our credentials, not this message.
        raise TransientDeliveryError(
            f"connect: SMTP {exc.code}",
            code=exc.code,
            enhanced_code=enhanced_code(exc.message),
            text=exc.message[:500],
            server_wide=True,
        ) from exc
    except aiosmtplib.SMTPRecipientsRefused as exc:
        first = exc.recipients[0]
        raise classify(first.code, first.message) from exc
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        if phase == "data":
            raise DeliveryUnknownError(
                f"connection lost after the message was sent: {type(exc).__name__}"
            ) from exc
        raise TransientDeliveryError(
            f"{phase}: {type(exc).__name__}: {exc}", server_wide=phase == "connect"
        ) from exc


def _on_the_wire(data: bytes) -> bytes:
    """The message as DATA carries it (RFC 5321 4.5.2): CRLF line ends (`crlf_lines`), a
    leading dot doubled, the final dot. Once every line ends in CRLF, a line starts at the
    beginning or after an LF."""
    data = crlf_lines(data)
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\n.", b"\n..") + b".\r\n"


@contextmanager
def _first_command() -> Iterator[None]:
    try:
        with map_smtp_errors("envelope"):
            yield
    except TransientDeliveryError as exc:
        if isinstance(exc, StaleConnection):
            raise
        raise StaleConnection(
            str(exc),
            code=exc.code,
            enhanced_code=exc.enhanced_code,
            text=exc.text,
            server_wide=exc.server_wide,  # a 421 still tells the breaker the server is down
        ) from exc


class Connection:
    """One SMTP connection of the pool, set up (TLS, AUTH, EHLO) by aiosmtplib.

    When the server offers PIPELINING (RFC 2920), the transaction is MAIL, RCPT and DATA in
    one write and the body in a second: two round trips instead of four, each one a turn of
    a busy event loop. aiosmtplib's protocol drops replies it was not waiting for, so for
    that the connection's transport is handed to `_Replies`, which queues them.

    8bit mail goes as is with BODY=8BITMIME when the server offers 8BITMIME, else as
    `seven_bit` re-encodes it: RFC 6152 3 forbids sending 8bit data to a server without it.
    """

    def __init__(self, client: aiosmtplib.SMTP, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._replies: _Replies | None = None
        self._eight_bit_mime = client.supports_extension("8bitmime")
        self._smtputf8 = client.supports_extension("smtputf8")
        size = client.esmtp_extensions.get("size", "")
        self._size_limit = int(size) if size.isdigit() else 0
        """The largest message the server takes (RFC 1870 SIZE); 0 when it says nothing."""
        transport = client.transport
        if client.supports_extension("pipelining") and transport is not None:
            self._replies = _Replies(transport)
            transport.set_protocol(self._replies)

    @property
    def pipelining(self) -> bool:
        return self._replies is not None

    @property
    def alive(self) -> bool:
        if self._replies is not None:
            return self._replies.open
        return self._client.is_connected

    def close(self) -> None:
        self._client.close()

    async def quit(self) -> None:
        if self._replies is None:
            await self._client.quit()
            return
        self._replies.write(b"QUIT\r\n")
        await self._replies.reply(self._timeout_s)
        self.close()

    def prepared(self, message: Email) -> Email:
        """The message as this server takes it: 8bit parts re-encoded without 8BITMIME; a
        permanent failure if it needs SMTPUTF8 the server lacks, or is over its SIZE."""
        if message.smtputf8 and not self._smtputf8:
            raise SmtpUtf8Unsupported(
                "the address is UTF-8 and the relay does not offer SMTPUTF8 (RFC 6531)"
            )
        if not self._eight_bit_mime:
            message = seven_bit(message)
        if self._size_limit and len(message.data) > self._size_limit:
            raise MessageTooLarge(
                f"the message has {len(message.data):,} bytes, over the relay's SIZE "
                f"({self._size_limit:,}, RFC 1870)"
            )
        return message

    async def envelope(self, message: Email) -> None:
        """MAIL, RCPT and DATA, up to the server's 354: nothing of the body has left yet."""
        if self._replies is None:
            await self._envelope(message)
        else:
            await self._pipelined_envelope(message)

    async def body(self, message: Email) -> aiosmtplib.SMTPResponse:
        """The body and the server's reply; from the first byte on, a failure leaves the
        outcome unknown (RFC 1047)."""
        return await self._body(message.data)

    async def _envelope(self, message: Email) -> None:
        client = self._client
        encoding = "utf-8" if message.smtputf8 else "ascii"
        with _first_command():
            await client.mail(
                message.envelope_from, options=_mail_options(message), encoding=encoding
            )
        with map_smtp_errors("envelope"):
            await client.rcpt(message.envelope_to, encoding=encoding)
            # A refusal of DATA itself, or a connection lost before the 354, comes before
            # any of the message left: an envelope failure, not the RFC 1047 window.
            start = await client.execute_command(b"DATA")
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)

    async def _pipelined_envelope(self, message: Email) -> None:
        assert self._replies is not None
        group = b"MAIL FROM:%s%s\r\nRCPT TO:%s\r\nDATA\r\n" % (
            _path(message.envelope_from),
            b"".join(b" " + option.encode() for option in _mail_options(message)),
            _path(message.envelope_to),
        )
        # The server answers all three whatever happens (RFC 2920); the first refusal is the
        # one that counts. A failed connection is closed, not reset, so the rest goes unread.
        with _first_command():
            self._replies.write(group)
            mail = await self._replies.reply(self._timeout_s)
            if mail.code != 250:
                raise aiosmtplib.SMTPSenderRefused(mail.code, mail.message, message.envelope_from)
        with map_smtp_errors("envelope"):
            rcpt = await self._replies.reply(self._timeout_s)
            data = await self._replies.reply(self._timeout_s)
            if rcpt.code not in (250, 251):
                raise aiosmtplib.SMTPRecipientRefused(rcpt.code, rcpt.message, message.envelope_to)
            if data.code != 354:
                raise aiosmtplib.SMTPDataError(data.code, data.message)

    async def _body(self, data: bytes) -> aiosmtplib.SMTPResponse:
        """The body as composed: aiosmtplib's `data()` makes two regex passes over every body
        (line endings, dot-stuffing); `compose` already writes CRLF
        lines, so `_on_the_wire` only checks that, and doubles the dots C-level."""
        with map_smtp_errors("data"):
            if self._replies is not None:
                self._replies.write(_on_the_wire(data))
                reply = await self._replies.reply(self._timeout_s)
            else:
                protocol = self._client.protocol
                if protocol is None:
                    raise aiosmtplib.SMTPServerDisconnected("Connection lost")
                try:
                    protocol.write(_on_the_wire(data))
                    # No await between the write and read_response: no reply can come first.
                    reply = await protocol.read_response(timeout=self._timeout_s)
                except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
                    self.close()
                    raise
            if reply.code != 250:
                raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        return reply


def _mail_options(message: Email) -> list[str]:
    """MAIL parameters: 8bit mail says so (RFC 6152 2), a UTF-8 address too (RFC 6531 3.4)."""
    options = ["BODY=8BITMIME"] if message.eight_bit else []
    return [*options, "SMTPUTF8"] if message.smtputf8 else options


def _path(address: str) -> bytes:
    """`<address>` for MAIL FROM / RCPT TO; `compose` has refused anything that would not fit,
    and `prepared` a UTF-8 address the server cannot take."""
    if not address.isprintable() or any(c in address for c in " <>"):
        raise aiosmtplib.SMTPRecipientRefused(553, "5.1.3 address not usable", address)
    return b"<" + address.encode() + b">"


class _Replies(asyncio.Protocol):
    """Reads SMTP replies off a pipelining connection, however many arrive in one read."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._ready: deque[aiosmtplib.SMTPResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.open = True

    def write(self, data: bytes) -> None:
        if not self.open or self._transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        cast(asyncio.WriteTransport, self._transport).write(data)

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if len(line) < 4 or not line[:3].isdigit():
                self._fail(aiosmtplib.SMTPResponseException(-1, f"Malformed reply: {line!r}"))
                return
            self._lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                text = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
                self._ready.append(aiosmtplib.SMTPResponse(int(line[:3]), text))
                self._lines = []
        if len(self._buffer) > 65536:
            self._fail(aiosmtplib.SMTPResponseException(-1, "Reply too long"))
        elif self._ready:
            self._wake(None)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._wake(aiosmtplib.SMTPServerDisconnected(f"Connection lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        self.open = False
        self._transport.close()
        self._wake(exc)

    def _wake(self, exc: Exception | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def reply(self, timeout_s: float) -> aiosmtplib.SMTPResponse:
        if not self._ready:
            if not self.open:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout_s)
            except TimeoutError as exc:
                timeout = aiosmtplib.SMTPReadTimeoutError("Timed out waiting for a reply")
                self._fail(timeout)  # the connection is out of step: close it
                raise timeout from exc
        return self._ready.popleft()
