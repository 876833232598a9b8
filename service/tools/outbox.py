"""A local SMTP capture server for `make run`: every message received becomes an `.eml` file.

It is a real SMTP server over TCP (aiosmtpd), so Herald talks to it exactly as to a relay;
it just delivers into `var/outbox/` instead of the world.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("herald.outbox")


class OutboxHandler:
    """aiosmtpd handler writing each message to `<dir>/<n>-<message-id>.eml`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.count = len(list(directory.glob("*.eml")))

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or envelope.content
        mid = re.search(rb"^Message-ID:\s*<([^>@\r\n]+)", data, re.M | re.I)
        name = mid.group(1).decode("ascii", "replace")[:40] if mid else "message"
        self.count += 1
        path = self.directory / f"{self.count:05d}-{re.sub(r'[^A-Za-z0-9_-]', '_', name)}.eml"
        path.write_bytes(data)
        log.info("message captured", file=str(path), rcpt_count=len(envelope.rcpt_tos))
        return "250 2.0.0 Message accepted for delivery"


async def serve(directory: Path, host: str, port: int, stop: asyncio.Event) -> None:
    """Run the capture server until `stop` is set."""
    from aiosmtpd.controller import Controller

    logging.getLogger("mail.log").setLevel(logging.WARNING)  # a line per SMTP command otherwise
    controller = Controller(OutboxHandler(directory), hostname=host, port=port)
    controller.start()
    log.info("outbox listening", smtp=f"{host}:{port}", directory=str(directory))
    try:
        await stop.wait()
    finally:
        controller.stop()
