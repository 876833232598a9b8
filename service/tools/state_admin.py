"""`herald suppress …` and `herald forget`: read and change the preference and suppression
topics from the command line. Reads restore a private copy of the tables from the topics (as
the service does at start-up), so they show what every instance will see; changes are records
on the topics, which every instance follows."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import confluent_kafka

from service.errors import HeraldError
from service.events.schemas import SchemaStore
from service.kafka.admin import ensure_state_topics, state_topics
from service.policy.rules import SUPPRESSION_REASONS
from service.policy.state import address_key
from service.settings import Settings
from service.stores.follower import Follower
from service.stores.running import codecs, open_caps
from service.stores.suppressions import (
    Scope,
    Suppression,
    address_digest,
    address_hint,
    suppression_key,
)
from service.stores.tables import PolicyTables

Change = tuple[str, bytes, bytes | None]


def snapshot(settings: Settings, schemas: SchemaStore, directory: Path) -> PolicyTables:
    """Both tables as the topics hold them now, in a file under `directory`."""
    ensure_state_topics(settings)
    preferences, suppressions = codecs(schemas)
    tables = PolicyTables(directory / "snapshot.sqlite3", preferences, suppressions)
    k = settings.kafka
    topics = state_topics(settings)
    followers = [
        Follower(k.librdkafka(), topics[0], tables.apply_preferences),
        Follower(k.librdkafka(), topics[1], tables.apply_suppressions),
    ]
    for f in followers:
        f.start()
    try:
        for f in followers:
            if not f.restored.wait(settings.policy.restore_timeout_s):
                raise HeraldError(
                    f"{f.topic} could not be read to its end: {f.failure or 'timeout'}"
                )
    finally:
        for f in followers:
            f.stop()
    return tables


def publish(settings: Settings, changes: list[Change]) -> None:
    """Write the records and wait for the broker to acknowledge every one."""
    producer = confluent_kafka.Producer(
        {**settings.kafka.librdkafka(), "enable.idempotence": True, "acks": "all"}
    )
    failures: list[str] = []

    def report(err: confluent_kafka.KafkaError | None, _: confluent_kafka.Message) -> None:
        if err is not None:
            failures.append(err.str())

    for topic, key, value in changes:
        producer.produce(topic, value, key, on_delivery=report)
    left = producer.flush(30)
    if left or failures:
        raise HeraldError(f"not every record was written: {failures or f'{left} unacknowledged'}")


def _suppression_lines(entries: list[Suppression], now: datetime, out: TextIO) -> None:
    for s in entries:
        until = s.expires_at.isoformat() if s.expires_at else "never"
        state = "active" if s.active(now) else "lapsed"
        out.write(
            f"{s.address_hint}\t{s.scope.value}\t{s.reason}\t{s.source}\t"
            f"since {s.created_at.isoformat()}\tuntil {until}\t{state}\t{s.address_digest[:12]}\n"
        )


def cmd_suppress(settings: Settings, args: argparse.Namespace) -> int:
    schemas = SchemaStore.load(settings.schemas_dir)
    key = address_key(settings)
    topic = state_topics(settings)[1]
    now = datetime.now(UTC)
    out = sys.stdout
    if args.action in ("add", "remove", "show") and not args.address:
        raise HeraldError(f"`herald suppress {args.action}` needs an address")
    if args.action == "add":
        _, codec = codecs(schemas)
        s = Suppression(
            address_digest=address_digest(args.address, key),
            address_hint=address_hint(args.address),
            scope=Scope((args.scope or "all").upper()),
            reason=args.reason,
            source="cli",
            detail=args.detail,
            created_at=now,
            expires_at=now + timedelta(days=args.days) if args.days else None,
        )
        ensure_state_topics(settings)
        publish(settings, [(topic, s.key, codec.encode(s))])
        _suppression_lines([s], now, out)
        return 0
    if args.action == "remove":
        digest = address_digest(args.address, key)
        scopes = [Scope(args.scope.upper())] if args.scope else list(Scope)
        ensure_state_topics(settings)
        publish(settings, [(topic, suppression_key(digest, sc), None) for sc in scopes])
        out.write(f"lifted: {address_hint(args.address)} ({', '.join(s.value for s in scopes)})\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="herald-suppress-") as tmp:
        tables = snapshot(settings, schemas, Path(tmp))
        try:
            if args.action == "show":
                found = tables.suppressions(address_digest(args.address, key))
                if not found:
                    out.write(f"{address_hint(args.address)} is not suppressed\n")
                _suppression_lines(found, now, out)
            else:
                _suppression_lines(tables.listing(args.limit), now, out)
        finally:
            tables.close()
    return 0


@dataclass
class Forgotten:
    """What `herald forget` removed."""

    preferences: list[str] = field(default_factory=list)
    suppressions: list[str] = field(default_factory=list)
    cap_counters: int = 0


def forget(settings: Settings, schemas: SchemaStore, user_id: str, email: str | None) -> Forgotten:
    """Tombstone the user's choices and the address's suppressions; drop its cap counters."""
    key = address_key(settings)
    preferences_topic, suppressions_topic = state_topics(settings)
    done = Forgotten()
    with tempfile.TemporaryDirectory(prefix="herald-forget-") as tmp:
        tables = snapshot(settings, schemas, Path(tmp))
        try:
            changes: list[Change] = [
                (preferences_topic, p.key, None) for p in tables.preferences(user_id)
            ]
            done.preferences = [p.scope for p in tables.preferences(user_id)]
            if email:
                digest = address_digest(email, key)
                found = tables.suppressions(digest)
                done.suppressions = [f"{s.scope.value}:{s.reason}" for s in found]
                changes += [(suppressions_topic, s.key, None) for s in found]
        finally:
            tables.close()
    if changes:
        publish(settings, changes)
    if email:
        done.cap_counters = asyncio.run(_forget_caps(settings, address_digest(email, key)))
    return done


async def _forget_caps(settings: Settings, digest: str) -> int:
    caps = open_caps(settings)
    try:
        return await caps.forget(digest + ":")
    finally:
        await caps.close()


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    done = forget(settings, SchemaStore.load(settings.schemas_dir), args.user_id, args.email)
    out = sys.stdout
    out.write(f"preferences removed: {len(done.preferences)} {sorted(done.preferences)}\n")
    if args.email:
        out.write(f"suppressions removed: {len(done.suppressions)} {done.suppressions}\n")
        out.write(f"cap counters removed: {done.cap_counters}\n")
    else:
        out.write("suppressions and caps are kept by address: pass --email to remove them\n")
    out.write(
        "idempotency entries: none to remove (keyed by a one-way digest of event, type and "
        f"address, holding no address or user id; they expire after "
        f"{settings.idempotency.retention_h} h)\n"
    )
    return 0


def add_commands(sub: Any) -> None:
    """The `suppress` and `forget` subcommands, on the `herald` parser."""
    s = sub.add_parser("suppress", help="add, remove, show or list suppressed addresses")
    s.add_argument("action", choices=["add", "remove", "show", "list"])
    s.add_argument("address", nargs="?", help="the address (add, remove, show)")
    s.add_argument("--scope", choices=["all", "optional"], help="add: default all")
    s.add_argument("--reason", default="manual", choices=sorted(SUPPRESSION_REASONS))
    s.add_argument("--days", type=int, default=0, help="add: lapses after this many days")
    s.add_argument("--detail", help="add: a note, free of addresses")
    s.add_argument("--limit", type=int, default=50, help="list: newest first, at most this many")
    s.set_defaults(fn=cmd_suppress)
    f = sub.add_parser(
        "forget", help="erase a user: their preferences, and with --email their suppressions"
    )
    f.add_argument("user_id")
    f.add_argument("--email", help="the user's address, to remove its suppressions and caps")
    f.set_defaults(fn=cmd_forget)
