"""dkimpy, the reference implementation, as the verifier of Herald's signatures; for Ed25519
(RFC 8463) it wants PyNaCl, which is not installed, so its one call into PyNaCl is answered by
`cryptography` instead: dkimpy still parses, selects, canonicalizes and hashes."""

from __future__ import annotations

import base64
from collections.abc import Callable
from types import SimpleNamespace
from unittest import mock

import dkim
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from service.delivery.dkim import Signer
from service.testing import dkim_dns


class _BadSignature(Exception):
    """PyNaCl's BadSignatureError, as dkimpy catches it."""


class _VerifyKey:
    """PyNaCl's `nacl.signing.VerifyKey` as dkimpy uses it: made from the base64 p= of a
    `k=ed25519` record, `verify(message, signature)` raising on a bad signature."""

    def __init__(self, key: bytes, encoder: object = None) -> None:
        self._key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(key))

    def verify(self, message: bytes, signature: bytes) -> bytes:
        try:
            self._key.verify(signature, message)
        except InvalidSignature as exc:
            raise _BadSignature from exc
        return message


_NACL = SimpleNamespace(
    signing=SimpleNamespace(VerifyKey=_VerifyKey),
    encoding=SimpleNamespace(Base64Encoder=None),
    exceptions=SimpleNamespace(ValueError=ValueError, BadSignatureError=_BadSignature),
)


def verify(data: bytes, signer: Signer) -> bool:
    """Whether dkimpy verifies the message's first DKIM-Signature against the signer's TXT
    record (answered without DNS), Ed25519 included."""
    return verify_with(data, dkim_dns(signer))


def verify_with(data: bytes, dnsfunc: Callable[..., bytes | None]) -> bool:
    """Whether dkimpy verifies the message's first DKIM-Signature, `dnsfunc` answering its
    TXT query."""
    with mock.patch.object(dkim, "nacl", _NACL, create=True):
        return bool(dkim.verify(data, dnsfunc=dnsfunc))
