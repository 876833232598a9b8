"""Delivery: messages go out over a pool of persistent SMTP connections (aiosmtplib).

Reply codes are classified once, in `_map_smtp_errors`: 4xx and lost connections are transient,
5xx permanent, and a connection lost after the message body was handed over is *unknown*
(RFC 1047): the server may have accepted it, so it is never resent blindly.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import aiosmtplib
import structlog

from service.errors import (
    DeliveryError,
    DeliveryUnknownError,
    PermanentDeliveryError,
    SmtpUnavailable,
    TransientDeliveryError,
)
from service.metrics import Metrics
from service.mime import Email
from service.settings import SmtpSettings

log = structlog.get_logger("herald.mailer")
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """What the server said when it accepted a message."""

    code: int
    enhanced_code: str | None
    text: str
    attempts: int
    sent_at: datetime


def enhanced_code(text: str) -> str | None:
    """RFC 3463 status at the start of a reply text, e.g. `5.1.1`."""
    m = _ENHANCED.match(text.strip())
    return m.group(1) if m else None


def classify(code: int, text: str) -> DeliveryError:
    """4xx is worth another try later; anything else that is not 2xx is final (RFC 5321 4.2.1)."""
    cls = TransientDeliveryError if 400 <= code < 500 else PermanentDeliveryError
    err = cls(f"SMTP {code}", code=code, enhanced_code=enhanced_code(text), text=text[:500])
    err.server_wide = code == 421  # RFC 5321 3.8: the service is shutting down
    return err


class CircuitBreaker:
    """Opens after `threshold` consecutive server-wide failures; after `cooldown_s` lets one
    probe through (half-open), which closes it on success or reopens it on failure."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.last_error = ""
        """The failure that last counted against the server, for the error message."""

    @property
    def is_open(self) -> bool:
        """True while sending is refused, cool-down included; consumption pauses meanwhile."""
        return self._opened_at is not None

    def _ready(self) -> bool:
        if self._opened_at is None:
            return True
        return time.monotonic() - self._opened_at >= self._cooldown_s and not self._probing

    def allow(self) -> bool:
        """May a send go now? In half-open state only the first caller gets the probe."""
        if self._opened_at is None:
            return True
        if not self._ready():
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> bool:
        """Count a server-wide failure; True if this opened the breaker."""
        self._failures += 1
        was_open = self._opened_at is not None
        if self._probing or self._failures >= self._threshold:
            self._opened_at = time.monotonic()
            self._probing = False
            return not was_open
        return False

    async def wait(self) -> None:
        """Until a send may be tried again (it may still lose the probe to another caller)."""
        # The condition is time itself (and a probe's fate), so a short poll is the simplest.
        while not self._ready():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


@contextmanager
def _map_smtp_errors(phase: str) -> Iterator[None]:
    """Translate aiosmtplib's exceptions into ours, once."""
    try:
        yield
    except aiosmtplib.SMTPResponseException as exc:
        if phase != "connect":
            raise classify(exc.code, exc.message) from exc
        # Greeting refused or AUTH failed: the server or our credentials, not this message.
        err = TransientDeliveryError(
            f"connect: SMTP {exc.code}",
            code=exc.code,
            enhanced_code=enhanced_code(exc.message),
            text=exc.message[:500],
        )
        err.server_wide = True
        raise err from exc
    except aiosmtplib.SMTPRecipientsRefused as exc:
        first = exc.recipients[0]
        raise classify(first.code, first.message) from exc
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        if phase == "data":
            raise DeliveryUnknownError(
                f"connection lost after the message was sent: {type(exc).__name__}"
            ) from exc
        err = TransientDeliveryError(f"{phase}: {type(exc).__name__}: {exc}")
        err.server_wide = phase == "connect"
        raise err from exc


_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def _on_the_wire(data: bytes) -> bytes:
    """The message as DATA carries it (RFC 5321 4.5.2): CRLF line ends, a leading dot
    doubled, the final dot. The two fixes cost a regex pass each, so they run only if needed."""
    if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\r\n"):
        data = _BARE_LINE_END.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    return data + b".\r\n"


class Slots:
    """The pool's connection slots, handed out express first.

    Express waiters are served before any bulk waiter, and `reserved` slots are theirs alone:
    with every other connection busy with bulk DATA, a password reset still goes at once.
    """

    def __init__(self, size: int, reserved: int = 0) -> None:
        self._size = size
        self._bulk_limit = size - reserved
        self._used = 0
        self._bulk_used = 0
        self._waiters: dict[bool, deque[asyncio.Future[None]]] = {True: deque(), False: deque()}

    def _free(self, express: bool) -> bool:
        return self._used < self._size and (express or self._bulk_used < self._bulk_limit)

    def _take(self, express: bool) -> None:
        self._used += 1
        self._bulk_used += not express

    async def acquire(self, express: bool) -> None:
        ahead = self._waiters[True] or (not express and self._waiters[False])
        if not ahead and self._free(express):
            self._take(express)
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters[express].append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(express)  # granted, but its task was cancelled before it ran
            else:
                self._waiters[express].remove(fut)
            raise

    def release(self, express: bool) -> None:
        self._used -= 1
        self._bulk_used -= not express
        for kind in (True, False):
            queue = self._waiters[kind]
            while queue and self._free(kind):
                fut = queue.popleft()
                if not fut.done():
                    self._take(kind)
                    fut.set_result(None)
            if queue:
                return  # still waiting express mail keeps bulk waiting too

    @property
    def in_use(self) -> int:
        return self._used


class Mailer:
    """A bounded pool of SMTP connections with in-process retries for transient failures."""

    def __init__(self, settings: SmtpSettings, metrics: Metrics, *, express_slots: int = 0) -> None:
        """`express_slots`: connections kept for express mail (0 when there is no express lane)."""
        self._s = settings
        self._metrics = metrics
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = Slots(settings.pool_size, express_slots)
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown_s)

    async def __aenter__(self) -> Mailer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await asyncio.wait_for(client.quit(), timeout=2)
            except Exception:  # closing anyway; a QUIT refused changes nothing
                client.close()

    def _client(self) -> aiosmtplib.SMTP:
        s = self._s
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            local_hostname=s.local_hostname,
            timeout=s.timeout_s,
            use_tls=s.tls == "implicit",
            start_tls=s.tls == "starttls",
            validate_certs=s.validate_certs,
            cert_bundle=str(s.ca_file) if s.ca_file else None,
        )

    async def send(
        self,
        message: Email,
        before_data: Callable[[], Awaitable[None]] | None = None,
        *,
        express: bool = False,
    ) -> Delivery:
        """Deliver with a few quick retries; raises the last DeliveryError when they run out.

        `before_data` runs just before the message body is handed over: from then on a lost
        connection leaves the outcome unknown. Server-wide failures do not use up the message's
        tries; they feed the breaker, and once it is open SmtpUnavailable is raised at once.
        `express` mail gets the next free connection, and the reserved ones.
        """
        attempt = 0
        while True:
            if not self.breaker.allow():
                raise SmtpUnavailable(f"SMTP circuit breaker is open: {self.breaker.last_error}")
            attempt += 1
            try:
                delivery = await self._send_once(message, attempt, before_data, express)
            except DeliveryError as exc:
                self._metrics.smtp_attempt(exc)
                exc.attempts = attempt
                if exc.server_wide:
                    attempt -= 1
                    self.breaker.last_error = str(exc)
                    if self.breaker.failed():
                        self._metrics.breaker_open.set(1)
                        log.warning("SMTP circuit breaker opened", error=str(exc))
                else:
                    self._close_breaker()
                if not isinstance(exc, TransientDeliveryError) or attempt >= self._s.max_attempts:
                    raise
                base = self._s.retry_backoff_ms / 1000 * 2 ** max(0, attempt - 1)
                await asyncio.sleep(random.uniform(0, base))  # full jitter
                continue
            self._metrics.smtp_attempt(None)
            self._close_breaker()
            return delivery

    def _close_breaker(self) -> None:
        if self.breaker.is_open:
            log.info("SMTP circuit breaker closed")
            self._metrics.breaker_open.set(0)
        self.breaker.succeeded()

    async def _send_once(
        self,
        message: Email,
        attempt: int,
        before_data: Callable[[], Awaitable[None]] | None,
        express: bool,
    ) -> Delivery:
        await self._slots.acquire(express)
        try:
            client, reused = await self._acquire()
            started = time.perf_counter()
            ok = False
            try:
                try:
                    with _map_smtp_errors("envelope"):
                        await client.mail(message.envelope_from)
                except TransientDeliveryError:
                    if not reused:
                        raise
                    # An idle connection the server timed out; not the message's fault.
                    client.close()
                    client, reused = await self._acquire(fresh=True)
                    with _map_smtp_errors("envelope"):
                        await client.mail(message.envelope_from)
                with _map_smtp_errors("envelope"):
                    await client.rcpt(message.envelope_to)
                if before_data is not None:
                    await before_data()
                reply = await self._data(client, message.data)
                ok = True
            finally:
                self._metrics.smtp_seconds.observe(time.perf_counter() - started)
                if ok:
                    self._idle.append(client)
                else:
                    client.close()
        finally:
            self._slots.release(express)
        return Delivery(
            code=reply.code,
            enhanced_code=enhanced_code(reply.message),
            text=reply.message[:500],
            attempts=attempt,
            sent_at=datetime.now(UTC),
        )

    async def _data(self, client: aiosmtplib.SMTP, data: bytes) -> aiosmtplib.SMTPResponse:
        """DATA, then the body as composed. aiosmtplib's `data()` makes two regex passes over
        every body (line endings, dot-stuffing), about 0.45 ms a mail here; `compose` already
        writes CRLF lines that never start with a dot, so `_on_the_wire` only checks that.

        A refusal of the DATA command itself, or a connection lost before the 354, happens
        before any of the message left: that is an envelope failure, not the RFC 1047 window.
        """
        with _map_smtp_errors("envelope"):
            start = await client.execute_command(b"DATA")
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
        with _map_smtp_errors("data"):
            protocol = client.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            try:
                protocol.write(_on_the_wire(data))
                # No await between the write and read_response: the reply cannot come first.
                reply = await protocol.read_response(timeout=self._s.timeout_s)
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
                client.close()
                raise
            if reply.code != 250:
                raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        return reply

    async def _acquire(self, *, fresh: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        while not fresh and self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
        client = self._client()
        with _map_smtp_errors("connect"):
            await client.connect()
        return client, False
