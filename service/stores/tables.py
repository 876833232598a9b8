"""The local copy of the preference and suppression topics: one SQLite file, rebuilt at start.

Followers (service/stores/follower.py) write each topic's records in on their own threads;
the policy stage reads on the event loop through another connection. WAL lets the reads go on
while a follower writes. The file is a cache of the topics: it is emptied at start-up and
filled again from the beginning of each topic.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import structlog

from service.stores.consent import Preference, PreferenceCodec, split_preference_key
from service.stores.suppressions import (
    Scope,
    Suppression,
    SuppressionCodec,
    split_suppression_key,
)

log = structlog.get_logger("herald.tables")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS preferences (
    user_id TEXT NOT NULL, scope TEXT NOT NULL, subscribed INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, source TEXT NOT NULL, PRIMARY KEY (user_id, scope)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS suppressions (
    digest TEXT NOT NULL, scope TEXT NOT NULL, hint TEXT NOT NULL, reason TEXT NOT NULL,
    source TEXT NOT NULL, detail TEXT, created_at INTEGER NOT NULL, expires_at INTEGER,
    PRIMARY KEY (digest, scope)
) WITHOUT ROWID;
"""
Change = tuple[bytes, bytes | None]
"""A record of a compacted topic: key, and value or None for a tombstone."""


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class PolicyTables:
    """Reads and writes of the two tables; writers are the followers and `herald forget`."""

    def __init__(self, path: Path, preferences: PreferenceCodec, suppressions: SuppressionCodec):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._preferences = preferences
        self._suppressions = suppressions
        self._write_lock = threading.Lock()
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        self._reader = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # a cache of the topics: rebuilt if lost
        return db

    def clear(self) -> None:
        """Empty both tables before a restore: the topics are the truth."""
        with self._write_lock:
            self._writer.execute("DELETE FROM preferences")
            self._writer.execute("DELETE FROM suppressions")

    def apply_preferences(self, changes: Sequence[Change]) -> int:
        """Upsert or delete each record in one transaction; returns how many were refused."""
        refused = 0
        latest: dict[tuple[str, str], tuple[object, ...] | None] = {}  # the last record wins
        for key, value in changes:
            try:
                user_id, scope = split_preference_key(key)
                if value is None:
                    latest[(user_id, scope)] = None
                    continue
                p = self._preferences.decode(value)
                if (p.user_id, p.scope) != (user_id, scope):
                    raise ValueError("the value's user and scope differ from the key's")
            except (ValueError, UnicodeDecodeError) as exc:
                refused += 1
                log.warning("preference record refused", error=str(exc))
                continue
            latest[(user_id, scope)] = (
                user_id,
                scope,
                int(p.subscribed),
                _ms(p.updated_at),
                p.source,
            )
        gone = [k for k, row in latest.items() if row is None]
        rows = [row for row in latest.values() if row is not None]
        with self._write_lock:
            self._writer.execute("BEGIN")
            self._writer.executemany("DELETE FROM preferences WHERE user_id=? AND scope=?", gone)
            self._writer.executemany(
                "INSERT OR REPLACE INTO preferences VALUES (?, ?, ?, ?, ?)", rows
            )
            self._writer.execute("COMMIT")
        return refused

    def apply_suppressions(self, changes: Sequence[Change]) -> int:
        refused = 0
        latest: dict[tuple[str, str], tuple[object, ...] | None] = {}  # the last record wins
        for key, value in changes:
            try:
                digest, scope = split_suppression_key(key)
                if value is None:
                    latest[(digest, scope.value)] = None
                    continue
                s = self._suppressions.decode(value)
                if (s.address_digest, s.scope) != (digest, scope):
                    raise ValueError("the value's digest and scope differ from the key's")
            except (ValueError, UnicodeDecodeError) as exc:
                refused += 1
                log.warning("suppression record refused", error=str(exc))
                continue
            latest[(digest, scope.value)] = (
                digest,
                scope.value,
                s.address_hint,
                s.reason,
                s.source,
                s.detail,
                _ms(s.created_at),
                None if s.expires_at is None else _ms(s.expires_at),
            )
        gone = [k for k, row in latest.items() if row is None]
        rows = [row for row in latest.values() if row is not None]
        with self._write_lock:
            self._writer.execute("BEGIN")
            self._writer.executemany("DELETE FROM suppressions WHERE digest=? AND scope=?", gone)
            self._writer.executemany(
                "INSERT OR REPLACE INTO suppressions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            self._writer.execute("COMMIT")
        return refused

    def choices(self, user_id: str) -> dict[str, bool]:
        """The user's choices by scope (`all`, `category:…`, `type:…`)."""
        rows = self._reader.execute(
            "SELECT scope, subscribed FROM preferences WHERE user_id=?", (user_id,)
        )
        return {scope: bool(subscribed) for scope, subscribed in rows}

    def preferences(self, user_id: str) -> list[Preference]:
        rows = self._reader.execute(
            "SELECT scope, subscribed, updated_at, source FROM preferences WHERE user_id=?",
            (user_id,),
        )
        return [
            Preference(
                user_id=user_id, scope=sc, subscribed=bool(sub), updated_at=_at(at), source=src
            )
            for sc, sub, at, src in rows
        ]

    def suppressions(self, digest: str) -> list[Suppression]:
        """Every suppression stored for the address digest, lapsed ones included."""
        rows = self._reader.execute("SELECT * FROM suppressions WHERE digest=?", (digest,))
        return list(_suppressions(rows))

    def listing(self, limit: int) -> list[Suppression]:
        """The newest suppressions first."""
        rows = self._reader.execute(
            "SELECT * FROM suppressions ORDER BY created_at DESC LIMIT ?", (limit,)
        )
        return list(_suppressions(rows))

    def sizes(self) -> dict[str, int]:
        return {
            t: self._reader.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
            for t in ("preferences", "suppressions")
        }

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


def _suppressions(rows: Iterable[tuple[object, ...]]) -> Iterable[Suppression]:
    for digest, scope, hint, reason, source, detail, created, expires in rows:
        yield Suppression(
            address_digest=str(digest),
            address_hint=str(hint),
            scope=Scope(str(scope)),
            reason=str(reason),
            source=str(source),
            detail=None if detail is None else str(detail),
            created_at=_at(int(str(created))),
            expires_at=None if expires is None else _at(int(str(expires))),
        )
