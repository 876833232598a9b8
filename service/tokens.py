"""Signed, expiring tokens for one-click unsubscribe links (RFC 8058).

A token is `v1.<key id>.<expiry>.<mac>`: the MAC is HMAC-SHA256, under the key the id names,
over the version, key id, expiry (Unix seconds) and what the link does (user, notification
type, category), in unpadded base64url. The key id lets keys rotate: new links are signed with
the current key, links already sent keep verifying under a previous one until they expire.
Verification compares in constant time and says why a token is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from service.errors import InvalidToken

VERSION = "v1"
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_TOKEN = re.compile(r"v1\.([A-Za-z0-9_-]{1,32})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True, kw_only=True)
class Keys:
    """The signing key and every key a token may still be verified with, by id."""

    current: str
    """Id of the key new tokens are signed with."""
    secrets: Mapping[str, bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    """What a verified token allows: this user's opt-out of this notification type."""

    user_id: str
    notification: str
    category: str
    key_id: str
    expires_at: int


def _mac(secret: bytes, key_id: str, expires_at: int, claims: tuple[str, str, str]) -> str:
    message = "\x1f".join((VERSION, key_id, str(expires_at), *claims)).encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(keys: Keys, *, user_id: str, notification: str, category: str, expires_at: int) -> str:
    """A token for this user, notification type and category, valid until `expires_at`."""
    claims = (user_id, notification, category)
    mac = _mac(keys.secrets[keys.current], keys.current, expires_at, claims)
    return f"{VERSION}.{keys.current}.{expires_at}.{mac}"


def verify(
    keys: Keys, token: str, *, user_id: str, notification: str, category: str, now: int
) -> Claims:
    """The claims of a genuine, unexpired token for exactly this link; InvalidToken if not."""
    m = _TOKEN.fullmatch(token)
    if m is None:
        raise InvalidToken("not a Herald unsubscribe token")
    key_id, expires_at, mac = m.group(1), int(m.group(2)), m.group(3)
    secret = keys.secrets.get(key_id)
    if secret is None:
        raise InvalidToken(f"signed with an unknown key {key_id!r}")
    expected = _mac(secret, key_id, expires_at, (user_id, notification, category))
    if not hmac.compare_digest(expected.encode(), mac.encode()):
        raise InvalidToken("the signature does not match this link")
    if now >= expires_at:
        raise InvalidToken("the link has expired", expired=True)
    return Claims(
        user_id=user_id,
        notification=notification,
        category=category,
        key_id=key_id,
        expires_at=expires_at,
    )
