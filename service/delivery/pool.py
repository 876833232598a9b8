"""Delivery: messages go out over a pool of persistent SMTP connections, express mail first,
with a few quick retries and a circuit breaker for a server that is down as a whole.

The conversation itself (replies classified, pipelining, the body on the wire) is in
`service.smtp`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiosmtplib
import structlog

from service.delivery.breaker import CircuitBreaker
from service.delivery.mime import Email
from service.delivery.slots import Slots
from service.delivery.smtp import Connection, Stale, enhanced_code, map_smtp_errors
from service.errors import DeliveryError, SmtpUnavailable, TransientDeliveryError
from service.metrics import Metrics
from service.settings import SmtpSettings

log = structlog.get_logger("herald.mailer")


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """What the server said when it accepted a message."""

    code: int
    enhanced_code: str | None
    text: str
    attempts: int
    sent_at: datetime


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
