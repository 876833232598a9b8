"""The two wire formats of an Avro record: what precedes the body, and where the body starts.

- single-object (Avro spec 1.11): C3 01, the writer schema's 8-byte CRC-64-AVRO fingerprint,
  the body;
- Confluent: byte 00, a 4-byte big-endian schema-registry id, the body.
"""

from __future__ import annotations

from service.errors import DecodeError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
"""Marker of the Avro single-object encoding: C3 01, then the 8-byte CRC-64-AVRO fingerprint."""
CONFLUENT_MAGIC = 0


def single_object(value: bytes) -> tuple[bytes, bytes]:
    """(fingerprint, body) of a single-object encoded value."""
    if len(value) < 10 or value[:2] != SINGLE_OBJECT_MAGIC:
        raise DecodeError(
            f"not Avro single-object encoded: starts with {value[:4].hex()!r}, "
            f"expected c301 and an 8-byte fingerprint"
        )
    return value[2:10], value[10:]


def confluent(value: bytes) -> tuple[int, bytes]:
    """(schema id, body) of a value in the Confluent wire format."""
    if len(value) < 5 or value[0] != CONFLUENT_MAGIC:
        raise DecodeError(
            f"not Confluent wire format: starts with {value[:5].hex()!r}, "
            f"expected magic byte 00 and a 4-byte schema id"
        )
    return int.from_bytes(value[1:5], "big"), value[5:]


def confluent_header(schema_id: int) -> bytes:
    """The five bytes before a body in the Confluent wire format."""
    return bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big")
