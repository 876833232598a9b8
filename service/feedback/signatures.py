"""Checks that a webhook comes from its provider: SNS's RSA signature and certificate URL,
Postmark's basic auth, SendGrid's ECDSA signature, Mailgun's HMAC. Each raises FeedbackError
with `unauthenticated` set; none says which part of a secret was wrong."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from service.errors import DependencyUnavailable, FeedbackError

MAX_CLOCK_SKEW_S = 600
"""A signed SendGrid or Mailgun request older (or newer) than this is refused as a replay."""
SNS_CERTIFICATE_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
"""AWS's pattern for the host of a SigningCertURL (its SNS message verification guide)."""
_SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
"""The fields each SNS message type signs, in the order they are signed."""

Fetch = Callable[[str], Awaitable[bytes]]


def _refused(message: str) -> FeedbackError:
    return FeedbackError(message, unauthenticated=True)


def check_sns_url(url: object) -> str:
    """`url` if it is https on an SNS host with no credentials or port, else FeedbackError."""
    if not isinstance(url, str):
        raise _refused("SNS: the certificate URL is missing")
    parts = urlsplit(url)
    host = parts.hostname or ""
    if (
        parts.scheme != "https"
        or not SNS_CERTIFICATE_HOST.match(host)
        or parts.username is not None
        or parts.port is not None
        or not parts.path.endswith(".pem")
    ):
        raise _refused("SNS: the certificate URL is not an https .pem on an SNS host")
    return url


def sns_string_to_sign(envelope: Mapping[str, Any]) -> bytes:
    """The canonical text an SNS message's signature covers: name, newline, value, newline
    for each signed field present, in byte order of the names."""
    kind = envelope.get("Type")
    names = _SNS_FIELDS.get(kind) if isinstance(kind, str) else None
    if names is None:
        raise FeedbackError(f"SNS: unknown message type {str(kind)[:40]!r}")
    out = []
    for name in names:
        value = envelope.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise FeedbackError(f"SNS: the signed field {name} is missing")
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode()


def check_sns_signature(envelope: Mapping[str, Any], certificate_pem: bytes) -> None:
    """Verify SignatureVersion 1 (SHA1withRSA) or 2 (SHA256withRSA) against the certificate."""
    version = envelope.get("SignatureVersion")
    algorithm: hashes.HashAlgorithm
    if version == "1":
        algorithm = hashes.SHA1()  # noqa: S303 - SNS's SignatureVersion 1 is SHA1withRSA
    elif version == "2":
        algorithm = hashes.SHA256()
    else:
        raise _refused(f"SNS: unknown SignatureVersion {str(version)[:8]!r}")
    signature = _b64(envelope.get("Signature"), "SNS: the signature")
    try:
        key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    except ValueError as exc:
        raise _refused("SNS: the signing certificate does not read") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise _refused("SNS: the signing certificate's key is not RSA")
    try:
        key.verify(signature, sns_string_to_sign(envelope), padding.PKCS1v15(), algorithm)
    except InvalidSignature as exc:
        raise _refused("SNS: the signature does not verify") from exc


class SnsCertificates:
    """SNS signing certificates by URL, fetched once each over https and kept."""

    def __init__(self, fetch: Fetch | None = None, *, timeout_s: float = 10.0) -> None:
        """`fetch`: URL → PEM; defaults to an httpx GET."""
        self._fetch = fetch or self._get
        self._timeout_s = timeout_s
        self._cache: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    async def pem(self, url: object) -> bytes:
        """The certificate at `url`, after `check_sns_url`; DependencyUnavailable if AWS does
        not answer."""
        checked = check_sns_url(url)
        async with self._lock:
            if checked not in self._cache:
                self._cache[checked] = await self._fetch(checked)
            return self._cache[checked]

    async def confirm(self, url: object) -> None:
        """Confirm an SNS subscription by fetching its SubscribeURL, an https URL on an SNS
        host like the certificate's (checked after the message's signature)."""
        if not isinstance(url, str):
            raise FeedbackError("SNS: the SubscribeURL is missing")
        parts = urlsplit(url)
        if (
            parts.scheme != "https"
            or not SNS_CERTIFICATE_HOST.match(parts.hostname or "")
            or parts.username is not None
            or parts.port is not None
        ):
            raise _refused("SNS: the SubscribeURL is not https on an SNS host")
        await self._fetch(url)

    async def _get(self, url: str) -> bytes:
        try:
            async with httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False) as c:
                response = await c.get(url)
                response.raise_for_status()
        except httpx.HTTPError as exc:
            host = urlsplit(url).hostname
            raise DependencyUnavailable(f"SNS: {host} did not answer: {exc}") from exc
        return response.content[:65536]


def check_basic_auth(header: str | None, user: str | None, password: str | None) -> None:
    """An `Authorization: Basic` header for exactly `user` and `password`, compared in
    constant time; FeedbackError when either is unset (the provider is not configured)."""
    if not user or not password:
        raise _refused("basic auth is not configured for this provider")
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    if not hmac.compare_digest((header or "").encode(), expected.encode()):
        raise _refused("the basic auth credentials do not match")


def check_sendgrid_signature(
    body: bytes, signature: str | None, timestamp: str | None, public_key: str | None
) -> None:
    """ECDSA P-256 with SHA-256 over timestamp + body (SendGrid's Signed Event Webhook)."""
    if not public_key:
        raise _refused("SendGrid: no verification key is configured")
    if not signature or not timestamp:
        raise _refused("SendGrid: the signature or timestamp header is missing")
    _fresh(timestamp, "SendGrid")
    key = _ec_key(public_key)
    try:
        key.verify(
            _b64(signature, "SendGrid: the signature"),
            timestamp.encode() + body,
            ec.ECDSA(hashes.SHA256()),
        )
    except InvalidSignature as exc:
        raise _refused("SendGrid: the signature does not verify") from exc


def check_mailgun_signature(signature: object, signing_key: str | None) -> None:
    """Hex HMAC-SHA-256 of timestamp + token under the webhook signing key (Mailgun)."""
    if not signing_key:
        raise _refused("Mailgun: no signing key is configured")
    if not isinstance(signature, dict):
        raise _refused("Mailgun: the signature object is missing")
    ts, token, given = (str(signature.get(k) or "") for k in ("timestamp", "token", "signature"))
    if not (ts and token and given):
        raise _refused("Mailgun: the signature's timestamp, token or signature is missing")
    _fresh(ts, "Mailgun")
    expected = hmac.new(signing_key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise _refused("Mailgun: the signature does not verify")


def _fresh(timestamp: str, provider: str) -> None:
    try:
        when = float(timestamp)
    except ValueError as exc:
        raise _refused(f"{provider}: the timestamp is not a number") from exc
    if abs(time.time() - when) > MAX_CLOCK_SKEW_S:
        raise _refused(f"{provider}: the timestamp is over {MAX_CLOCK_SKEW_S} s from now")


def _ec_key(text: str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key given as PEM or as base64 DER (how SendGrid shows it)."""
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text.strip()))
    except (ValueError, binascii.Error) as exc:
        raise FeedbackError("SendGrid: the configured verification key does not read") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise FeedbackError("SendGrid: the configured verification key is not ECDSA")
    return key


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise _refused(f"{what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _refused(f"{what} is not base64") from exc
