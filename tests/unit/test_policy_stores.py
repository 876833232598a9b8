"""The local preference and suppression tables and the cap counters (SQLite and a real Redis)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.app import Loaded
from service.stores.caps import CapStore, RedisCaps, SqliteCaps
from service.stores.consent import Preference, preference_key
from service.stores.running import codecs
from service.stores.suppressions import Scope, Suppression, address_digest, suppression_key
from service.stores.tables import PolicyTables

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def tables(loaded: Loaded, tmp_path: Path) -> PolicyTables:
    preferences, suppressions = codecs(loaded.store)
    return PolicyTables(tmp_path / "t.sqlite3", preferences, suppressions)


def _pref(user: str, scope: str, subscribed: bool) -> Preference:
    return Preference(user_id=user, scope=scope, subscribed=subscribed, updated_at=NOW, source="t")


def test_choices_follow_upserts_and_tombstones(loaded: Loaded, tables: PolicyTables) -> None:
    codec, _ = codecs(loaded.store)
    a, b = _pref("u1", "all", False), _pref("u1", "category:report", True)
    assert 0 == tables.apply_preferences([(p.key, codec.encode(p)) for p in (a, b)])
    assert {"all": False, "category:report": True} == tables.choices("u1")
    newer = _pref("u1", "all", True)
    tables.apply_preferences([(newer.key, codec.encode(newer)), (b.key, None)])
    assert {"all": True} == tables.choices("u1")
    assert {} == tables.choices("u2")


def test_records_that_cannot_be_read_are_counted_and_skipped(
    loaded: Loaded, tables: PolicyTables
) -> None:
    codec, _ = codecs(loaded.store)
    good = _pref("u1", "all", False)
    other = _pref("u2", "all", False)
    refused = tables.apply_preferences(
        [
            (b"no separator", codec.encode(good)),
            (preference_key("u1", "all"), b"\xc3\x01junk"),
            (preference_key("u1", "all"), codec.encode(other)),  # key and value disagree
            (b"u1\x1fcategory:x\x1fmore", None),
            (b"\xff\xfe", None),
            (good.key, codec.encode(good)),
        ]
    )
    assert 5 == refused
    assert {"all": False} == tables.choices("u1")


def test_suppressions_by_digest_and_newest_first(loaded: Loaded, tables: PolicyTables) -> None:
    _, codec = codecs(loaded.store)
    digest = address_digest("Jane@Example.com ", b"k" * 32)
    assert digest == address_digest("jane@example.com", b"k" * 32)
    entries = [
        Suppression(
            address_digest=digest,
            address_hint="j***@example.com",
            scope=scope,
            reason=reason,
            source="t",
            created_at=NOW + timedelta(minutes=i),
            expires_at=None if i == 0 else NOW + timedelta(days=30),
            detail="5.1.1",
        )
        for i, (scope, reason) in enumerate([(Scope.ALL, "hard_bounce"), (Scope.OPTIONAL, "x")])
    ]
    tables.apply_suppressions([(s.key, codec.encode(s)) for s in entries])
    assert entries == sorted(tables.suppressions(digest), key=lambda s: s.created_at)
    assert [entries[1], entries[0]] == tables.listing(10)
    tables.apply_suppressions([(suppression_key(digest, Scope.ALL), None)])
    assert [entries[1]] == tables.suppressions(digest)
    assert {"preferences": 0, "suppressions": 1} == tables.sizes()


async def _cap_behaviour(caps: CapStore, counter: str) -> None:
    assert await caps.take(counter, "k1", 2, 3600)
    assert await caps.take(counter, "k2", 2, 3600)
    assert not await caps.take(counter, "k3", 2, 3600)
    assert await caps.take(counter, "k1", 2, 3600), "a key already counted is counted once"
    assert await caps.take(counter + "-other", "k3", 2, 3600), "counters are apart"
    assert 2 == await caps.forget(counter)
    assert await caps.take(counter, "k3", 2, 3600), "forgotten counters start again"


async def test_sqlite_caps(tmp_path: Path) -> None:
    caps = SqliteCaps(tmp_path / "caps.sqlite3")
    await _cap_behaviour(caps, "d1:activity")
    await caps.close()


async def test_sqlite_caps_forget_old_entries(tmp_path: Path) -> None:
    caps = SqliteCaps(tmp_path / "caps.sqlite3")
    assert await caps.take("c", "k1", 1, 1)
    assert not await caps.take("c", "k2", 1, 1)
    await asyncio.sleep(1.05)  # the window passes; the assertion is on the count, not the time
    assert await caps.take("c", "k2", 1, 1)
    await caps.close()


async def test_redis_caps_shared_by_two_clients(redis_url: str) -> None:
    a, b = RedisCaps(redis_url), RedisCaps(redis_url)
    counter = f"d-{uuid.uuid4().hex}:activity"
    await _cap_behaviour(a, counter)
    results = await asyncio.gather(
        *(
            c.take(counter + "x", f"k{i}-{j}", 5, 3600)
            for i in range(40)
            for j, c in enumerate((a, b))
        )
    )
    assert 5 == sum(results), "two instances together never pass the cap"
    await a.close()
    await b.close()


def test_within_one_batch_the_last_record_of_a_key_wins(
    loaded: Loaded, tables: PolicyTables
) -> None:
    codec, _ = codecs(loaded.store)
    p = _pref("u1", "all", False)
    tables.apply_preferences([(p.key, codec.encode(p)), (p.key, None)])
    assert {} == tables.choices("u1")
    tables.apply_preferences([(p.key, None), (p.key, codec.encode(p))])
    assert {"all": False} == tables.choices("u1")
