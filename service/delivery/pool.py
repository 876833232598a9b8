"""The SMTP pool: persistent connections, express mail first, and a circuit breaker for a
relay that is down as a whole. An attempt is a `Session`: envelope, then body, so the caller
can record that the body is about to leave (RFC 1047) before it does.

The conversation itself (replies classified, pipelining, the body on the wire) is in
`service.delivery.smtp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aiosmtplib
import structlog

from service.delivery.breaker import CircuitBreaker
from service.delivery.dkim import Signer
from service.delivery.mime import Email
from service.delivery.slots import Slots
from service.delivery.smtp import Connection, enhanced_code, map_smtp_errors
from service.errors import DeliveryError, SmtpUnavailable, StaleConnection
from service.metrics import Metrics
from service.settings import SmtpSettings

log = structlog.get_logger("herald.mailer")


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    """What the server said when it accepted a message."""

    code: int
    enhanced_code: str | None
    text: str
    sent_at: datetime


class Mailer:
    """A bounded pool of SMTP connections; one attempt at a time per `session`."""

    def __init__(
        self,
        settings: SmtpSettings,
        metrics: Metrics,
        *,
        express_slots: int = 0,
        signer: Signer | None = None,
    ) -> None:
        """`express_slots`: connections kept for express mail (0 when there is no express lane).
        `signer`: signs again a message a connection re-encodes (no 8BITMIME)."""
        self._s = settings
        self._signer = signer
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

    async def available(self) -> None:
        """Until a send may be tried again after a server-wide failure: the breaker's
        cool-down while it is open, else a short jittered pause."""
        if self.breaker.is_open:
            await self.breaker.wait()
        else:
            await asyncio.sleep(random.uniform(0, self._s.retry_backoff_ms / 1000))

    @property
    def holding(self) -> bool:
        """True while the breaker is open: consuming more records would only queue mail."""
        return self.breaker.is_open

    @contextlib.asynccontextmanager
    async def session(self, *, express: bool = False) -> AsyncIterator[Session]:
        """One attempt on one pooled connection: `envelope`, then `body`.

        Raises SmtpUnavailable at once while the breaker is open. Every DeliveryError counts
        for the breaker (server-wide ones against the relay, the others as signs of life) and
        for the metrics. `express` mail gets the next free connection, and the reserved ones.
        """
        if not self.breaker.allow():
            raise SmtpUnavailable(f"SMTP circuit breaker is open: {self.breaker.last_error}")
        await self._slots.acquire(express)
        session = Session(self)
        try:
            yield session
        except DeliveryError as exc:
            self._judge(exc)
            raise
        finally:
            session.finish()
            self._slots.release(express)
        if session.accepted:
            self._judge(None)

    async def send(self, message: Email, *, express: bool = False) -> Accepted:
        """One attempt, with no pause between envelope and body (tools and benchmarks)."""
        async with self.session(express=express) as session:
            await session.envelope(message)
            return await session.body()

    def _judge(self, error: DeliveryError | None) -> None:
        self._metrics.smtp_attempt(error)
        if error is not None and error.server_wide:
            if self.breaker.failed(str(error)):
                self._metrics.breaker_open.set(1)
                log.warning("SMTP circuit breaker opened", error=str(error))
            return
        if self.breaker.is_open:
            log.info("SMTP circuit breaker closed")
            self._metrics.breaker_open.set(0)
        self.breaker.succeeded()

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


class Session:
    """One attempt on a pooled connection; made by `Mailer.session`."""

    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer
        self._conn: Connection | None = None
        self._message: Email | None = None
        self._started: float | None = None
        self.accepted = False

    async def envelope(self, message: Email) -> None:
        """MAIL, RCPT and DATA: once this returns the server waits for the body, and nothing
        of it has left; a pooled connection the server timed out is replaced on the way."""
        conn, reused = await self._mailer._acquire()
        self._use(conn, message)
        try:
            await conn.envelope(self._message_for(conn))
        except StaleConnection:
            if not reused:
                raise
            conn.close()  # an idle connection the server timed out; not the message's fault
            conn, _ = await self._mailer._acquire(fresh=True)
            self._use(conn, message)
            await conn.envelope(self._message_for(conn))

    async def body(self) -> Accepted:
        """The body and the reply. From here on a failure leaves the outcome unknown."""
        if self._conn is None or self._message is None:
            raise RuntimeError("Session.body() before envelope()")
        reply = await self._conn.body(self._message)
        self.accepted = True
        return Accepted(
            code=reply.code,
            enhanced_code=enhanced_code(reply.message),
            text=reply.message[:500],
            sent_at=datetime.now(UTC),
        )

    def _use(self, conn: Connection, message: Email) -> None:
        self._conn, self._message = conn, message
        if self._started is None:
            self._started = time.perf_counter()

    def _message_for(self, conn: Connection) -> Email:
        assert self._message is not None
        prepared = conn.prepared(self._message)
        signer = self._mailer._signer
        if prepared is not self._message and signer is not None:
            # Re-encoded for a relay without 8BITMIME: the signed body hash does not match it.
            prepared = signer.resign(prepared)
        self._message = prepared
        return prepared

    def finish(self) -> None:
        """Back to the pool if the server accepted the message, else closed."""
        if self._started is not None:
            self._mailer._metrics.smtp_seconds.observe(time.perf_counter() - self._started)
        if self._conn is not None:
            if self.accepted:
                self._mailer._idle.append(self._conn)
            else:
                self._conn.close()
