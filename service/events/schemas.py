"""Avro schemas from `schemas/`, fingerprints, and the single-object encoding (Avro spec 1.11)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

from service.errors import ConfigError
from service.events.framing import SINGLE_OBJECT_MAGIC

HISTORY_DIR = "history"
"""Older, fully expanded versions kept so registry-free producers on them keep working."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSchema:
    """One parsed schema and what identifies it on the wire."""

    name: str
    """Full name, e.g. `herald.events.OrderConfirmed`."""
    path: Path
    parsed: Any
    """fastavro's parsed form, ready for reading and writing."""
    fingerprint: bytes
    """CRC-64-AVRO of the canonical form, little-endian, as single-object encoding writes it."""
    canonical: str
    """Parsing canonical form: what a registry stores and the fingerprint covers."""
    current: bool
    """False for files under `history/`: writers only, never readers."""


def _stored(path: Path, parsed: Any, *, current: bool) -> StoredSchema:
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    return StoredSchema(
        name=fastavro.schema.fullname(parsed) if isinstance(parsed, dict) else str(parsed),
        path=path,
        parsed=parsed,
        fingerprint=bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")),
        canonical=canonical,
        current=current,
    )


class SchemaStore:
    """Every schema Herald knows: current readers by name, any version by fingerprint."""

    def __init__(self, schemas: list[StoredSchema]) -> None:
        self._by_name = {s.name: s for s in schemas if s.current}
        self._by_fingerprint = {s.fingerprint: s for s in schemas}

    @classmethod
    def load(cls, directory: Path) -> SchemaStore:
        """Parse `directory/*.avsc` (named types resolved by file name) and `history/*.avsc`."""
        if not directory.is_dir():
            raise ConfigError(
                str(directory),
                "schemas_dir",
                "directory does not exist",
                "point HERALD_SCHEMAS_DIR at the folder holding the .avsc files",
            )
        schemas = []
        for path in sorted(directory.glob("*.avsc")):
            schemas.append(_stored(path, _parse(path, history=False), current=True))
        for path in sorted((directory / HISTORY_DIR).glob("*.avsc")):
            schemas.append(_stored(path, _parse(path, history=True), current=False))
        return cls(schemas)

    def reader(self, name: str) -> StoredSchema | None:
        """The current schema of that full name, which every older writer is resolved to."""
        return self._by_name.get(name)

    def by_fingerprint(self, fingerprint: bytes) -> StoredSchema | None:
        return self._by_fingerprint.get(fingerprint)

    def names(self) -> list[str]:
        return sorted(self._by_name)


def _parse(path: Path, *, history: bool) -> Any:
    try:
        if history:
            # History files stand alone: fastavro resolves names only beside the file.
            return fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))
        return fastavro.schema.load_schema(str(path))
    except (ValueError, fastavro.schema.SchemaParseException, fastavro.schema.UnknownType) as exc:
        raise ConfigError(
            str(path),
            "schema",
            f"not a valid Avro schema: {exc}",
            "fix the JSON; a named type used here must live in <namespace>.<Name>.avsc beside it"
            + (" (history files must be fully expanded)" if history else ""),
        ) from exc


def write_body(schema: StoredSchema, record: Mapping[str, Any]) -> bytes:
    """Binary Avro body with no framing."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, record)
    return buf.getvalue()


def encode_single_object(schema: StoredSchema, record: Mapping[str, Any]) -> bytes:
    """Avro single-object encoding: magic, fingerprint, body."""
    return SINGLE_OBJECT_MAGIC + schema.fingerprint + write_body(schema, record)


def read_body(body: bytes, writer: Any, reader: Any) -> Any:
    """Decode `body` written with `writer`, resolved to `reader`; every byte must be used.

    Raises whatever fastavro raises on bad input; the caller translates it.
    """
    buf = io.BytesIO(body)
    record = fastavro.schemaless_reader(buf, writer, reader)
    left = len(body) - buf.tell()
    if left:
        raise ValueError(f"{left} trailing bytes after the record")
    return record
