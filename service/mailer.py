"""Delivery: messages go out over a pool of persistent SMTP connections, express mail first,
with a few quick retries and a circuit breaker for a server that is down as a whole.

The conversation itself (replies classified, pipelining, the body on the wire) is in
`service.smtp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiosmtplib
import structlog

from service.errors import (
    DeliveryError,
    SmtpUnavailable,
    TransientDeliveryError,
)
from service.metrics import Metrics
from service.mime import Email
from service.settings import SmtpSettings
from service.smtp import Connection, Stale, enhanced_code, map_smtp_errors

log = structlog.get_logger("herald.mailer")


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """What the server said when it accepted a message."""

    code: int
    enhanced_code: str | None
    text: str
    attempts: int
    sent_at: datetime


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
                # A release may have dropped the cancelled future from the queue already.
                with contextlib.suppress(ValueError):
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
        self._idle: list[Connection] = []
        self._slots = Slots(settings.pool_size, express_slots)
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown_s)
        self._warming: asyncio.Task[int] | None = None

    async def __aenter__(self) -> Mailer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._warming is not None:  # first, or it could add a connection after the QUITs
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await asyncio.wait_for(conn.quit(), timeout=2)
            except Exception:  # closing anyway; a QUIT refused changes nothing
                conn.close()

    def warm_in_background(self) -> None:
        """`warm()` without waiting for it: a relay slow to answer must not hold up start-up.
        `close()` stops it."""
        self._warming = asyncio.create_task(self.warm())

    async def warm(self) -> int:
        """Open the pool's connections before the first mail needs one, so it does not pay
        for connecting, STARTTLS and AUTH (a round trip or more each): after a deploy the
        first mail is often a password reset. Returns how many opened. A relay out of reach
        is only logged: mail connects again when it comes, and the breaker judges then."""

        async def one() -> DeliveryError | None:
            await self._slots.acquire(True)  # any free slot; a mail waiting takes this one
            try:
                conn, _ = await self._acquire(fresh=True)
                self._idle.append(conn)
                return None
            except DeliveryError as exc:
                return exc
            finally:
                self._slots.release(True)

        errors = await asyncio.gather(*(one() for _ in range(self._s.pool_size)))
        failed = [e for e in errors if e is not None]
        if failed:
            log.warning(
                "SMTP connections not opened at start-up; mail will connect when it comes",
                failed=len(failed),
                error=str(failed[0]),
            )
        return len(errors) - len(failed)

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
            conn, reused = await self._acquire()
            started = time.perf_counter()
            ok = False
            try:
                try:
                    reply = await conn.transaction(message, before_data)
                except Stale:
                    if not reused:
                        raise
                    # An idle connection the server timed out; not the message's fault.
                    conn.close()
                    conn, reused = await self._acquire(fresh=True)
                    reply = await conn.transaction(message, before_data)
                ok = True
            finally:
                self._metrics.smtp_seconds.observe(time.perf_counter() - started)
                if ok:
                    self._idle.append(conn)
                else:
                    conn.close()
        finally:
            self._slots.release(express)
        return Delivery(
            code=reply.code,
            enhanced_code=enhanced_code(reply.message),
            text=reply.message[:500],
            attempts=attempt,
            sent_at=datetime.now(UTC),
        )

    async def _acquire(self, *, fresh: bool = False) -> tuple[Connection, bool]:
        while not fresh and self._idle:
            conn = self._idle.pop()
            if conn.alive:
                return conn, True
            conn.close()
        client = self._client()
        with map_smtp_errors("connect"):
            await client.connect()
            if client.is_ehlo_or_helo_needed:  # without TLS or AUTH, connect() sends none
                try:
                    await client.ehlo()  # the extensions decide how transactions go
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        return Connection(client, self._s.timeout_s), False
