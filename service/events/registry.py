"""Writer schemas from a Confluent-compatible Schema Registry, trusted only as registered.

A record names its writer by schema id. Herald uses that schema only if it is registered under
the subject of the record's topic (`<topic>-value`, the TopicNameStrategy): an id of any other
subject, or of none, is a decode error, so a producer cannot make Herald read its bytes with a
schema nobody registered for that topic. A writer schema with an array or map of items that
take no bytes (null, an empty record) is refused too: its block count could ask for 2^62 items
at no cost in bytes. Schemas are cached per (topic, id), at most `CACHE_SIZE`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import fastavro

from service.errors import DecodeError, SchemaRegistryUnavailable

CACHE_SIZE = 1024


class RegisteredWriters:
    """Writer schemas by topic and id, checked against the topic's subject."""

    def __init__(self, registry: Any) -> None:
        """`registry`: a confluent-kafka `AsyncSchemaRegistryClient`."""
        self._registry = registry
        self._cache: OrderedDict[tuple[str, int], Any] = OrderedDict()

    async def writer(self, topic: str, schema_id: int) -> Any:
        """The parsed writer schema; DecodeError if it is not registered for this topic."""
        key = (topic, schema_id)
        if (cached := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return cached
        schema = await self._call(self._registry.get_schema(schema_id), schema_id)
        subject = f"{topic}-value"
        registered = await self._call(
            self._registry.lookup_schema(subject, schema), schema_id, subject=subject
        )
        if registered.schema_id != schema_id:
            raise DecodeError(f"schema id {schema_id} is not registered under subject {subject}")
        try:
            parsed = fastavro.parse_schema(json.loads(schema.schema_str))
        except Exception as exc:
            raise DecodeError(f"schema id {schema_id} is not a valid Avro schema: {exc}") from exc
        if where := zero_size_items(parsed):
            raise DecodeError(f"schema id {schema_id} has items of no size at {where}")
        self._cache[key] = parsed
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return parsed

    @staticmethod
    async def _call(call: Any, schema_id: int, *, subject: str | None = None) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return await call
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and subject is None:
                raise DecodeError(f"schema id {schema_id} is not in the registry") from exc
            if exc.http_status_code == 404:
                raise DecodeError(
                    f"schema id {schema_id} is not registered under subject {subject}"
                ) from exc
            raise SchemaRegistryUnavailable(f"schema registry answered {exc}") from exc
        except Exception as exc:  # httpx transport errors and timeouts
            raise SchemaRegistryUnavailable(
                f"schema registry unreachable: {type(exc).__name__}"
            ) from exc


def zero_size_items(schema: Any, path: str = "") -> str | None:
    """Where an array or map of `schema` has items that encode in no bytes, if anywhere."""
    seen: set[str] = set()

    def walk(s: Any, where: str) -> str | None:
        if isinstance(s, list):
            return next((w for b in s if (w := walk(b, where))), None)
        if not isinstance(s, dict):
            return None
        kind = s.get("type")
        if kind in ("array", "map"):
            items = s["items"] if kind == "array" else s["values"]
            if _zero_size(items, set()):
                return where or "the top level"
            return walk(items, f"{where}[]")
        if kind == "record":
            name = s.get("name", "")
            if name in seen:
                return None
            seen.add(name)
            return next(
                (w for f in s.get("fields", []) if (w := walk(f["type"], f"{where}.{f['name']}"))),
                None,
            )
        return walk(kind, where) if isinstance(kind, dict | list) else None

    return walk(schema, path)


def _zero_size(s: Any, seen: set[str]) -> bool:
    """Whether a value of `s` can take no bytes at all (null, a record of such fields…)."""
    if s == "null":
        return True
    if isinstance(s, list):  # a union always writes its branch index: at least one byte
        return False
    if isinstance(s, dict):
        kind = s.get("type")
        if kind == "null":
            return True
        if kind == "record":
            name = s.get("name", "")
            if name in seen:
                return False
            return all(_zero_size(f["type"], seen | {name}) for f in s.get("fields", []))
        if kind == "fixed":
            return int(s.get("size", 1)) == 0
        if isinstance(kind, dict):
            return _zero_size(kind, seen)
    return False
