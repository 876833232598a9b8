"""Doubles for testing code that uses Herald, as `structlog.testing` is for structlog: a
record factory, an in-memory idempotency store, and a real SMTP server on 127.0.0.1 (aiosmtpd,
from the `dev` extra) that records messages and misbehaves on cue.

The SMTP server chooses its behaviour per recipient local part, so one server serves every
scenario: `perm…@` → 550 5.1.1 at RCPT, `temp…@` → 451 4.3.0 at RCPT, `flaky…@` → 451 for the
first three RCPTs of that address then accepted, `drop…@` → connection closed after the message
body, before any reply (the RFC 1047 window), `slow…@` → the reply to DATA comes after
`SLOW_DATA_S` (a relay busy scanning the message).

For DKIM: `dkim_key()` makes an RSA private key and `dkim_ed25519_key()` an Ed25519 one, and
`dkim_dns(signer)` answers a verifier's TXT query from the signer's own key, so signatures are
checked without DNS.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from service.delivery.dkim import Signer, public_record
from service.errors import StoreUnavailable
from service.kafka.records import RawRecord
from service.stores.idempotency import IdempotencyStore, Prior, State


def record(
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None = None,
    partition: int = 0,
    offset: int = 0,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> RawRecord:
    """A consumed record, as the Kafka adapter hands it to the flow."""
    return RawRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=headers,
        timestamp_ms=int(time.time() * 1000),
    )


class MemoryStore(IdempotencyStore):
    """The idempotency store in a dict; `down` makes every call raise StoreUnavailable."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("memory store set down by the test")

    def state(self, key: str) -> State:
        return State(self.values[key]["state"]) if key in self.values else State.NEW

    async def claim(self, key: str) -> Prior:
        self._check()
        prior = self.values.get(key)
        if prior is None or prior["state"] == State.CLAIMED:
            self.values[key] = {"state": State.CLAIMED.value}
        return _prior(prior)

    async def data_started(self, key: str) -> None:
        self._check()
        self.values[key] = {"state": State.IN_DATA.value}

    async def accepted(self, key: str, *, message_id: str, smtp_code: int, sent_at_ms: int) -> None:
        self._check()
        self.values[key] = {
            "state": State.ACCEPTED.value,
            "message_id": message_id,
            "smtp_code": smtp_code,
            "sent_at_ms": sent_at_ms,
        }

    async def release(self, key: str) -> None:
        self._check()
        self.values.pop(key, None)


def _prior(value: dict[str, Any] | None) -> Prior:
    if value is None:
        return Prior(state=State.NEW)
    return Prior(
        state=State(value["state"]),
        message_id=value.get("message_id"),
        smtp_code=value.get("smtp_code"),
        sent_at_ms=value.get("sent_at_ms"),
    )


SLOW_DATA_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    envelope_from: str
    envelope_to: list[str]
    data: bytes
    began: float = 0.0
    """`time.monotonic()` when the server began this DATA (the server's clock, not the test's)."""
    ended: float = 0.0
    """`time.monotonic()` when the server accepted it."""

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RecordingHandler:
    received: list[Received] = field(default_factory=list)
    rcpt_attempts: int = 0
    flaky_seen: dict[str, int] = field(default_factory=dict)
    data_started: list[list[str]] = field(default_factory=list)
    """Recipients of every DATA the server began, received or not."""
    pipelining: bool = False
    """Offer PIPELINING (RFC 2920) in the EHLO reply; aiosmtpd reads pipelined commands."""
    ehlos: int = 0
    """EHLO commands answered: one per connection Herald opens (no TLS here)."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.ehlos += 1
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        self.rcpt_attempts += 1
        local = address.split("@", 1)[0]
        if local.startswith("perm"):
            return "550 5.1.1 Mailbox does not exist"
        if local.startswith("temp"):
            return "451 4.3.0 Try again later"
        if local.startswith("flaky"):
            self.flaky_seen[address] = self.flaky_seen.get(address, 0) + 1
            if self.flaky_seen[address] <= 3:
                return "451 4.3.0 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        began = time.monotonic()
        self.data_started.append(list(envelope.rcpt_tos))
        if any(r.split("@", 1)[0].startswith("slow") for r in envelope.rcpt_tos):
            await asyncio.sleep(SLOW_DATA_S)
        if any(r.split("@", 1)[0].startswith("drop") for r in envelope.rcpt_tos):
            server.transport.close()  # body received, reply never sent
            return "250 2.0.0 never seen"
        self.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                began,
                time.monotonic(),
            )
        )
        return "250 2.0.0 Ok: queued"


class SmtpServer:
    """Context manager running the recording server on a free port."""

    def __init__(
        self,
        port: int | None = None,
        *,
        pipelining: bool = False,
        smtputf8: bool = False,
        size: int | None = None,
    ) -> None:
        """`smtputf8`: offer SMTPUTF8 (RFC 6531); `size`: advertise SIZE (RFC 1870)."""
        self.handler = RecordingHandler(pipelining=pipelining)
        self.port = port or free_port()
        self._controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            enable_SMTPUTF8=smtputf8,
            data_size_limit=size,
        )

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


class TlsSmtpServer(SmtpServer):
    """The recording server requiring STARTTLS, with a certificate from a throw-away CA."""

    def __init__(self, ca_dir: Path) -> None:
        import ssl

        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self.ca_file = ca_dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.handler = RecordingHandler()
        self.port = free_port()
        self._controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=ctx,
            require_starttls=True,
        )


def dkim_key(bits: int = 2048) -> bytes:
    """A fresh RSA private key, as the PKCS#8 PEM `openssl genpkey` writes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def dkim_ed25519_key() -> bytes:
    """A fresh Ed25519 private key (RFC 8463), as the PKCS#8 PEM `openssl genpkey` writes."""
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def dkim_dns(signer: Signer) -> Callable[..., bytes | None]:
    """A `dnsfunc` for `dkim.verify`: the signer's TXT record at
    `<selector>._domainkey.<domain>.`, nothing anywhere else."""
    name = signer.selector + b"._domainkey." + signer.domain + b"."
    record = public_record(signer.key)

    def txt(queried: bytes, timeout: float = 5) -> bytes | None:
        return record if queried == name else None

    return txt
