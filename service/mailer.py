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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import aiosmtplib

from service.errors import (
    DeliveryError,
    DeliveryUnknownError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from service.metrics import Metrics
from service.mime import Email
from service.settings import SmtpSettings

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
    return cls(f"SMTP {code}", code=code, enhanced_code=enhanced_code(text), text=text[:500])


@contextmanager
def _map_smtp_errors(phase: str) -> Iterator[None]:
    """Translate aiosmtplib's exceptions into ours, once."""
    try:
        yield
    except aiosmtplib.SMTPRecipientsRefused as exc:
        first = exc.recipients[0]
        raise classify(first.code, first.message) from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise classify(exc.code, exc.message) from exc
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        if phase == "data":
            raise DeliveryUnknownError(
                f"connection lost after the message was sent: {type(exc).__name__}"
            ) from exc
        raise TransientDeliveryError(f"{phase}: {type(exc).__name__}: {exc}") from exc


class Mailer:
    """A bounded pool of SMTP connections with in-process retries for transient failures."""

    def __init__(self, settings: SmtpSettings, metrics: Metrics) -> None:
        self._s = settings
        self._metrics = metrics
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(settings.pool_size)

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

    async def send(self, message: Email) -> Delivery:
        """Deliver with a few quick retries; raises the last DeliveryError when they run out."""
        attempt = 0
        while True:
            attempt += 1
            try:
                delivery = await self._send_once(message, attempt)
            except TransientDeliveryError as exc:
                self._metrics.smtp_attempt(exc)
                if attempt >= self._s.max_attempts:
                    exc.attempts = attempt
                    raise
                base = self._s.retry_backoff_ms / 1000 * 2 ** (attempt - 1)
                await asyncio.sleep(random.uniform(0, base))  # full jitter
                continue
            except DeliveryError as exc:
                self._metrics.smtp_attempt(exc)
                exc.attempts = attempt
                raise
            self._metrics.smtp_attempt(None)
            return delivery

    async def _send_once(self, message: Email, attempt: int) -> Delivery:
        async with self._slots:
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
                with _map_smtp_errors("data"):
                    reply = await client.data(message.data)
                ok = True
            finally:
                self._metrics.smtp_seconds.observe(time.perf_counter() - started)
                if ok:
                    self._idle.append(client)
                else:
                    client.close()
        return Delivery(
            code=reply.code,
            enhanced_code=enhanced_code(reply.message),
            text=reply.message[:500],
            attempts=attempt,
            sent_at=datetime.now(UTC),
        )

    async def _acquire(self, *, fresh: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        while not fresh and self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
        client = self._client()
        with _map_smtp_errors("connect"):
            await client.connect()
        return client, False
