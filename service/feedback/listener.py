"""The SMTP listener of the bounce address: takes mail for `feedback.bounce_domain` only,
parses each message as a report, and answers 250 only once Kafka has its records."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from service.errors import DependencyUnavailable, FeedbackError
from service.feedback.publisher import FeedbackPublisher
from service.feedback.reports import parse_report
from service.settings.feedback import FeedbackSettings

log = structlog.get_logger("herald.feedback")


class BounceListener:
    """An SMTP server on the running loop; `start` binds it, `stop` closes it."""

    def __init__(self, settings: FeedbackSettings, publisher: FeedbackPublisher) -> None:
        if not settings.bounce_domain:
            raise ValueError("feedback.bounce_domain is required for the bounce listener")
        self._settings = settings
        self._domain = settings.bounce_domain.lower().rstrip(".")
        self._publisher = publisher
        self._server: asyncio.Server | None = None
        self.port: int | None = None
        """The bound port (the configured one, or the one picked for port 0)."""
        self.counts = {"published": 0, "refused": 0, "unpublished": 0}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        s = self._settings
        self._server = await loop.create_server(
            lambda: SMTP(
                self,
                data_size_limit=s.max_report_bytes,
                enable_SMTPUTF8=True,
                hostname=self._domain,
                ident="Herald bounce listener",
                # One mail per connection is the MTA's usual; a lingering client is dropped.
                timeout=60,
                loop=loop,
            ),
            host=s.smtp_host,
            port=s.smtp_port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("bounce listener started", host=s.smtp_host, port=self.port, domain=self._domain)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        log.info("bounce listener stopped", **self.counts)

    async def __aenter__(self) -> BounceListener:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # aiosmtpd handler hooks

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, _: Any
    ) -> str:
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if domain != self._domain:
            return "550 5.1.1 this server takes bounces for its own domain only"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if not isinstance(raw, bytes):
            raw = str(raw or "").encode("utf-8", "surrogateescape")
        try:
            items = parse_report(
                raw,
                verp_prefix=self._settings.verp_prefix,
                envelope_to=list(envelope.rcpt_tos),
                max_bytes=self._settings.max_report_bytes,
            )
        except FeedbackError as exc:
            # Refused rather than dropped: the sending MTA keeps a record of it, and an
            # auto-reply or stray mail to the bounce address is not feedback.
            self.counts["refused"] += 1
            log.warning("bounce refused", error=str(exc))
            return "554 5.6.0 not a bounce or complaint Herald can read"
        try:
            await self._publisher.publish(items)
        except DependencyUnavailable as exc:
            self.counts["unpublished"] += 1
            log.warning("bounce not published", error=str(exc))
            return "451 4.3.0 not stored; try again later"
        self.counts["published"] += 1
        log.info("bounce published", records=len(items), kinds=sorted({i.kind for i in items}))
        return "250 2.0.0 OK"
