"""A real SMTP server over TCP whose behaviour a scenario switches at run time.

One port for the whole scenario, behind which one of three listeners runs:
- `accept`: aiosmtpd, recording every message; per-message faults apply (below);
- `refuse`: a bare listener that greets every connection with 421 and hangs up;
- `down`: nothing listens (connection refused).

Faults applied by the aiosmtpd listener, each switchable at any time:
- recipients whose local part starts with `perm` get 550 5.1.1 at RCPT (always);
- `mail_421`: 421 4.3.2 to MAIL FROM;
- `rcpt_451`: 451 4.3.0 to every RCPT TO;
- `drop_after_data`: for that fraction of messages the body is taken (and recorded: the server
  *did* get it) and the connection closed before the reply, RFC 1047's window;
- `slow_ms`: a pause before the reply to DATA.

Every message taken is recorded with its Message-ID, so the checker can count duplicates.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from typing import Any, Literal

from aiosmtpd.controller import Controller

from service.testing import free_port

Listener = Literal["accept", "refuse", "down"]


@dataclass
class Faults:
    mail_421: bool = False
    rcpt_451: bool = False
    drop_after_data: float = 0.0
    slow_ms: int = 0


class _Handler:
    def __init__(self, owner: ChaosSmtp) -> None:
        self._owner = owner

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self._owner.faults.mail_421:
            self._owner.count("mail_421")
            return "421 4.3.2 Service not available, closing transmission channel"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.split("@", 1)[0].startswith("perm"):
            self._owner.count("rcpt_550")
            return "550 5.1.1 Mailbox does not exist"
        if self._owner.faults.rcpt_451:
            self._owner.count("rcpt_451")
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        owner = self._owner
        f = owner.faults
        if f.slow_ms:
            await asyncio.sleep(f.slow_ms / 1000)
        owner.record(envelope.original_content or b"", list(envelope.rcpt_tos))
        if f.drop_after_data and owner.rng.random() < f.drop_after_data:
            owner.count("dropped_after_data")
            server.transport.close()  # taken, but the client never hears so
            return "250 2.0.0 never seen"
        return "250 2.0.0 Ok: queued"


class _Refuser:
    """Answers every connection with 421 and closes it, on its own thread and loop."""

    def __init__(self, port: int, owner: ChaosSmtp) -> None:
        self._port = port
        self._owner = owner
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-smtp-421", daemon=True)

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._owner.count("connect_421")
        writer.write(b"421 4.3.2 chaos.local Service not available, closing channel\r\n")
        try:
            await writer.drain()
        finally:
            writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._greet, "127.0.0.1", self._port, reuse_address=True)
        )
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the 421 listener did not start")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class ChaosSmtp:
    """The scenario's mail server; `with ChaosSmtp() as smtp:` starts it accepting."""

    def __init__(self, seed: int = 0) -> None:
        self.port = free_port()
        self.faults = Faults()
        self.rng = random.Random(seed)
        self.listener: Listener = "down"
        self._lock = threading.Lock()
        self._by_id: Counter[str] = Counter()
        self._first_seen: dict[str, float] = {}
        self._without_id = 0
        self.events: Counter[str] = Counter()
        """How often each fault fired (rcpt_550, rcpt_451, mail_421, connect_421, …)."""
        self._controller: Controller | None = None
        self._refuser: _Refuser | None = None

    # -- recording (called on the server's thread) --------------------------------------------

    def record(self, data: bytes, rcpt: list[str]) -> None:
        headers = BytesHeaderParser().parsebytes(data)
        mid = (headers.get("Message-ID") or "").strip()
        with self._lock:
            if not mid:
                self._without_id += 1
                return
            self._by_id[mid] += 1
            self._first_seen.setdefault(mid, time.monotonic())

    def count(self, what: str) -> None:
        with self._lock:
            self.events[what] += 1

    # -- reading (test thread) ------------------------------------------------------------------

    def received(self) -> Counter[str]:
        """Message-ID → how many times a message carrying it was taken."""
        with self._lock:
            return Counter(self._by_id)

    @property
    def total_received(self) -> int:
        with self._lock:
            return sum(self._by_id.values()) + self._without_id

    # -- switching -------------------------------------------------------------------------------

    def set_listener(self, listener: Listener) -> None:
        if listener == self.listener:
            return
        self._stop_listener()
        if listener == "accept":
            self._controller = Controller(
                _Handler(self),
                hostname="127.0.0.1",
                port=self.port,
                ready_timeout=10,
                # Larger than any poison record's mail, so size is never the server's reason.
                data_size_limit=64 * 1024 * 1024,
            )
            self._controller.start()
        elif listener == "refuse":
            self._refuser = _Refuser(self.port, self)
            self._refuser.start()
        self.listener = listener

    def _stop_listener(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._refuser is not None:
            self._refuser.stop()
            self._refuser = None
        _wait_port_closed(self.port)

    def __enter__(self) -> ChaosSmtp:
        self.set_listener("accept")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_listener()
        self.listener = "down"


def _wait_port_closed(port: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)
