"""Avro values of Herald's own state topics (preferences, suppressions, feedback).

Each is written in the single-object encoding with the current schema of its name, and read
back through whatever schema version wrote it; keys are plain UTF-8.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.errors import ConfigError, DecodeError
from service.events import framing
from service.events.schemas import SchemaStore, encode_single_object, read_body

KEY_SEPARATOR = "\x1f"
"""Between the parts of a composite key: the ASCII unit separator, refused inside them."""


class StateCodec:
    """Encodes and decodes the records of one schema, by its full name."""

    def __init__(self, store: SchemaStore, name: str) -> None:
        schema = store.reader(name)
        if schema is None:
            raise ConfigError(
                "schemas/", name, "this schema is missing", f"restore schemas/{name}.avsc"
            )
        self.name = name
        self._schema = schema
        self._store = store

    def encode(self, record: Mapping[str, Any]) -> bytes:
        return encode_single_object(self._schema, record)

    def decode(self, value: bytes) -> dict[str, Any]:
        """The record; ValueError for bytes that are not a known version of this schema."""
        try:
            fingerprint, body = framing.single_object(value)
        except DecodeError as exc:
            raise ValueError(str(exc)) from exc
        writer = self._store.by_fingerprint(fingerprint)
        if writer is None or writer.name != self.name:
            raise ValueError(f"not a {self.name} record (fingerprint {fingerprint.hex()})")
        try:
            return dict(read_body(body, writer.parsed, self._schema.parsed))
        except Exception as exc:  # fastavro's errors on a truncated or corrupt body
            raise ValueError(f"a corrupt {self.name} record: {exc}") from exc


def composite_key(*parts: str) -> bytes:
    """`a␟b` as UTF-8; ValueError if a part holds the separator or is empty."""
    for p in parts:
        if not p or KEY_SEPARATOR in p:
            raise ValueError("a key part is empty or holds the unit separator")
    return KEY_SEPARATOR.join(parts).encode()


def split_key(key: bytes, parts: int) -> tuple[str, ...]:
    """The parts of a composite key; ValueError if it does not have `parts` of them."""
    out = tuple(key.decode().split(KEY_SEPARATOR))
    if len(out) != parts or not all(out):
        raise ValueError(f"expected a key of {parts} parts")
    return out
