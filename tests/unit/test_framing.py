"""Avro framing: the bytes before a body, in both wire formats, and what is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import DecodeError
from service.events import framing


@given(st.binary(min_size=8, max_size=8), st.binary(max_size=64))
def test_single_object_splits_fingerprint_and_body(fingerprint: bytes, body: bytes) -> None:
    assert (fingerprint, body) == framing.single_object(b"\xc3\x01" + fingerprint + body)


@given(st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=64))
def test_confluent_round_trips_the_schema_id(schema_id: int, body: bytes) -> None:
    assert (schema_id, body) == framing.confluent(framing.confluent_header(schema_id) + body)


@pytest.mark.parametrize("value", [b"", b"\xc3", b"\xc3\x01short", b"\x00\x01" + b"\x00" * 8])
def test_not_single_object_is_a_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError, match="single-object"):
        framing.single_object(value)


@pytest.mark.parametrize("value", [b"", b"\x00\x00\x00", b"\x01\x00\x00\x00\x01body"])
def test_not_confluent_is_a_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError, match="Confluent"):
        framing.confluent(value)
