"""The `herald.*` headers on the records Herald writes (dead letters, retry tickets), in one
codec: what a record's source was, and what Herald says about it."""

from __future__ import annotations

from service.kafka.records import RawRecord

PREFIX = "herald."
Headers = tuple[tuple[str, bytes], ...]


def encode(meta: dict[str, str]) -> Headers:
    """`{"reason": "x"}` → `(("herald.reason", b"x"),)`."""
    return tuple((PREFIX + k, v.encode()) for k, v in meta.items())


def decode(headers: Headers) -> dict[str, str]:
    """Herald's own headers without their prefix; the producer's are left out."""
    return {
        k.removeprefix(PREFIX): v.decode("utf-8", "replace")
        for k, v in headers
        if k.startswith(PREFIX)
    }


def foreign(headers: Headers) -> Headers:
    """The producer's own headers, without any Herald added on an earlier pass."""
    return tuple((k, v) for k, v in headers if not k.startswith(PREFIX))


def source(raw: RawRecord) -> dict[str, str]:
    """Where a record was first consumed: `source.topic`, `.partition`, `.offset`."""
    return {
        "source.topic": raw.topic,
        "source.partition": str(raw.partition),
        "source.offset": str(raw.offset),
    }
