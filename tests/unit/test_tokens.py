"""Unsubscribe tokens: signed for one link, with a key id and an expiry; keys rotate."""

from __future__ import annotations

import pytest

from service import tokens
from service.errors import InvalidToken

OLD = tokens.Keys(current="k1", secrets={"k1": b"first key"})
ROTATED = tokens.Keys(current="k2", secrets={"k2": b"second key", "k1": b"first key"})
LINK = {"user_id": "u-1", "notification": "activity.mention", "category": "activity"}


def _token(keys: tokens.Keys, expires_at: int = 1_000) -> str:
    return tokens.sign(keys, **LINK, expires_at=expires_at)


def test_a_token_verifies_for_its_link_until_it_expires() -> None:
    claims = tokens.verify(OLD, _token(OLD), **LINK, now=999)
    assert ("u-1", "k1", 1_000) == (claims.user_id, claims.key_id, claims.expires_at)
    with pytest.raises(InvalidToken, match="expired") as info:
        tokens.verify(OLD, _token(OLD), **LINK, now=1_000)
    assert "expired_token" == info.value.reason


def test_keys_rotate_old_links_keep_working_new_ones_use_the_new_key() -> None:
    assert tokens.verify(ROTATED, _token(OLD), **LINK, now=0).key_id == "k1"
    assert _token(ROTATED).startswith("v1.k2.")
    with pytest.raises(InvalidToken, match="unknown key"):
        tokens.verify(OLD, _token(ROTATED), **LINK, now=0)


@pytest.mark.parametrize(
    "change",
    [
        {"user_id": "u-2"},
        {"notification": "report.ready"},
        {"category": "report"},
    ],
)
def test_a_token_does_not_verify_for_another_link(change: dict[str, str]) -> None:
    with pytest.raises(InvalidToken, match="signature"):
        tokens.verify(OLD, _token(OLD), **{**LINK, **change}, now=0)


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "v1.k1.1000",
        "v2.k1.1000." + "A" * 43,
        "v1.k1.99999." + "A" * 43,  # a later expiry with a made-up MAC
        "v1.k1.1000." + "A" * 42 + "=",
    ],
)
def test_forged_or_malformed_tokens_are_refused(forged: str) -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(OLD, forged, **LINK, now=0)


def test_a_changed_expiry_breaks_the_signature() -> None:
    key_id, _, mac = _token(OLD).removeprefix("v1.").split(".")
    with pytest.raises(InvalidToken, match="signature"):
        tokens.verify(OLD, f"v1.{key_id}.999999.{mac}", **LINK, now=0)
