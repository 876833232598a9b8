"""Example events from `schemas/examples/`: readable JSON turned into Avro records.

The JSON is plain (no Avro union wrappers) with ISO-8601 strings for timestamps, so people can
write it by hand; `herald demo` publishes these and the tests use them.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from service.events.model import Event, Recipient
from service.events.schemas import SchemaStore, StoredSchema, encode_single_object
from service.routing import RoutingTable


def _coerce(schema: Any, value: Any) -> Any:
    """Walk the parsed schema and turn ISO strings into datetimes for timestamp fields."""
    if isinstance(schema, list):  # union: the first branch that is not null and fits
        if value is None:
            return None
        for branch in schema:
            if branch != "null":
                return _coerce(branch, value)
        return value
    if isinstance(schema, dict):
        t = schema.get("type")
        if schema.get("logicalType", "").startswith("timestamp") and isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        if t == "record":
            return {
                f["name"]: _coerce(f["type"], value.get(f["name"]))
                for f in schema["fields"]
                if f["name"] in value
            }
        if t == "array":
            return [_coerce(schema["items"], v) for v in value]
        if t == "map":
            return {k: _coerce(schema["values"], v) for k, v in value.items()}
        if isinstance(t, dict | list):
            return _coerce(t, value)
    return value


def load_example(path: Path, schema: StoredSchema) -> dict[str, Any]:
    return dict(_coerce(schema.parsed, json.loads(path.read_text(encoding="utf-8"))))


def example_event(path: Path, schema: StoredSchema, event_type: str, **recipient: Any) -> Event:
    """The example as a decoded event would be, with recipient fields overridden."""
    record = load_example(path, schema)
    r = {**record["recipient"], **recipient}
    return Event(
        event_id=record["event_id"],
        event_type=event_type,
        occurred_at=record["occurred_at"],
        recipient=Recipient(
            user_id=r["user_id"],
            email=r["email"],
            display_name=r.get("display_name"),
            locale=r.get("locale") or "en",
            time_zone=r.get("time_zone") or "UTC",
        ),
        payload=record["payload"],
        schema=schema.name,
    )


def example_records(
    examples_dir: Path, store: SchemaStore, table: RoutingTable
) -> list[tuple[str, dict[str, Any], bytes]]:
    """(event type, record, single-object bytes) for every event type with an example file."""
    out = []
    for event_type, spec in table.events.items():
        path = examples_dir / f"{event_type}.json"
        schema = store.reader(spec.schema_)
        if schema is None or not path.is_file():
            continue
        record = load_example(path, schema)
        out.append((event_type, record, encode_single_object(schema, record)))
    return out
