"""W3C Trace Context read from a record's headers: what level 1 accepts is read, anything else
is ignored and counted, never raised; and dead letters and retry tickets carry the headers on,
so a retried attempt reads the same trace."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.kafka.records import RawRecord
from service.metrics import Metrics
from service.outcomes.dead_letters import dead_letter
from service.outcomes.retries import RetryPolicy
from service.outcomes.trace import (
    MAX_TRACESTATE_MEMBERS,
    TraceContext,
    parse_traceparent,
    parse_tracestate,
    read,
    traced,
)
from service.settings import RetrySettings

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
PARENT = f"00-{TRACE}-{SPAN}-01".encode()
STATE = b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


def test_a_version_00_traceparent_is_read_field_for_field() -> None:
    assert TraceContext(version="00", trace_id=TRACE, parent_id=SPAN, flags=1) == (
        parse_traceparent(PARENT)
    )


def test_spaces_and_tabs_around_the_value_are_allowed() -> None:
    """OWS around a header value is not part of it (RFC 9110 §5.5); the W3C suite sends it."""
    context = parse_traceparent(b" \t" + PARENT + b"\t ")
    assert context is not None
    assert PARENT.decode() == context.traceparent


@pytest.mark.parametrize(
    "value",
    [
        b"",
        PARENT[:-1],  # too short
        PARENT + b"-",  # version 00 has exactly four fields
        PARENT + b"\r\n",  # a line break is no white space of a header
        PARENT.upper(),  # lowercase hex only
        PARENT.replace(b"-", b"_"),
        f"00-{'0' * 32}-{SPAN}-01".encode(),  # all-zero trace-id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # all-zero parent-id
        f"ff-{TRACE}-{SPAN}-01".encode(),  # version 255 is forbidden
        f"0x-{TRACE}-{SPAN}-01".encode(),
        f"00-{TRACE}-{SPAN}-0g".encode(),
        f"01-{TRACE}-{SPAN}-01x".encode(),  # a later version's extra fields follow a dash
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é".encode(),
        b"00-" + b"a" * 10_000,
        None,
    ],
)
def test_a_traceparent_that_does_not_follow_level_1_is_none(value: bytes | None) -> None:
    assert None is parse_traceparent(value)


def test_a_later_version_is_read_for_its_first_four_fields() -> None:
    """§4.3: parse what this level knows; of the flags, only the sampled bit."""
    context = parse_traceparent(f"cc-{TRACE}-{SPAN}-09-what-the-future-holds".encode())
    assert TraceContext(version="cc", trace_id=TRACE, parent_id=SPAN, flags=1) == context
    assert TraceContext(version="01", trace_id=TRACE, parent_id=SPAN, flags=0) == (
        parse_traceparent(f"01-{TRACE}-{SPAN}-00".encode())
    )


def test_tracestate_is_kept_whole_and_several_headers_are_joined() -> None:
    assert STATE.decode() == parse_tracestate([STATE])
    assert "rojo=1, congo=2,,tenant@vendor=x y" == parse_tracestate(
        [b"rojo=1, congo=2", b"", b"tenant@vendor=x y"]
    )
    assert "" == parse_tracestate([b" , ,"])


@pytest.mark.parametrize(
    "values",
    [
        [b"Rojo=1"],  # keys are lowercase
        [b"rojo=1,rojo=2"],  # a key given twice
        [b"rojo=1", b"rojo=2"],
        [b"rojo"],
        [b"rojo=a,b"],  # `b` is not a member
        [b"rojo=a=b"],  # no `=` in a value
        [b"rojo=1\r\nx=2"],
        [b"rojo=\xc3\xa9"],
        [",".join(f"k{i}=v" for i in range(MAX_TRACESTATE_MEMBERS + 1)).encode()],
        [b"k=" + b"v" * 257],  # a value of 257 characters
        [b"k=" + b"v" * 255 + b",j=" + b"w" * 253],  # 513 characters
        [b"a=1"] * 200,  # many headers, each fine: together over the bound
        [None],
    ],
)
def test_an_invalid_tracestate_is_none(values: list[bytes | None]) -> None:
    assert None is parse_tracestate(values)


def test_the_bounds_of_tracestate_are_inclusive() -> None:
    members = ",".join(f"k{i}=v" for i in range(MAX_TRACESTATE_MEMBERS)).encode()
    assert members.decode() == parse_tracestate([members])
    longest = b"k=" + b"v" * 255 + b",j=" + b"w" * 252
    assert 512 == len(longest)
    assert longest.decode() == parse_tracestate([longest])


def test_headers_read_into_one_context_with_the_reasons_it_is_not() -> None:
    both = read([("traceparent", PARENT), ("other", b"x"), ("tracestate", STATE)])
    assert ((), STATE.decode()) == (both.invalid, both.context and both.context.state)
    alone = read([("tracestate", STATE)])  # nothing to belong to, and nothing wrong
    assert (None, ()) == (alone.context, alone.invalid)
    twice = read([("traceparent", PARENT), ("Traceparent", PARENT)])
    assert (None, ("traceparent",)) == (twice.context, twice.invalid)
    bad_state = read([("traceparent", PARENT), ("tracestate", b"Bad=1")])
    assert bad_state.context is not None
    assert (None, ("tracestate",)) == (bad_state.context.state, bad_state.invalid)
    # tracestate is not even looked at when traceparent does not read.
    assert ("traceparent",) == read([("traceparent", b"x"), ("tracestate", b"Bad")]).invalid


def test_each_invalid_header_is_counted() -> None:
    metrics = Metrics()
    assert None is traced([("traceparent", b"00-bad")], metrics)
    assert None is traced([("traceparent", PARENT)] * 50, metrics)
    assert traced([("traceparent", PARENT), ("tracestate", b"x")], metrics) is not None
    assert traced([("traceparent", PARENT)], metrics) is not None
    count = metrics.registry.get_sample_value
    assert 2.0 == count("herald_trace_context_invalid_total", {"header": "traceparent"})
    assert 1.0 == count("herald_trace_context_invalid_total", {"header": "tracestate"})


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=700))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    """Whatever a producer puts in the headers, reading them returns; what it returns is a
    context whose fields are the version-00 form of the value's first 55 characters."""
    context = parse_traceparent(value)
    if context is not None:
        assert value.strip(b" \t").startswith(context.traceparent[:53].encode())
    parse_tracestate([value, value])
    read([("traceparent", value), ("tracestate", value), ("tracestate", value)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["traceparent", "tracestate", "x"]), st.binary())))
def test_arbitrary_header_lists_never_raise(pairs: list[tuple[str, bytes]]) -> None:
    found = read(pairs)
    assert (found.context is None) or ("traceparent" not in found.invalid)


_HEX = "0123456789abcdef"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
# Built from characters, not regexes: cheap to draw even with 32 members. At most 7 + 1 + 7
# characters a member and a comma, so 32 members stay within the 512 the parser keeps.
_KEY = st.builds(
    str.__add__, st.sampled_from(_LOWER), st.text(_LOWER + "0123456789_-*/", max_size=6)
)
_VALUE = st.builds(
    str.__add__, st.text(_VALUE_CHARS, max_size=6), st.sampled_from(_VALUE_CHARS.strip())
)


@given(
    trace_id=st.text(_HEX, min_size=32, max_size=32).filter(lambda t: t != "0" * 32),
    parent_id=st.text(_HEX, min_size=16, max_size=16).filter(lambda p: p != "0" * 16),
    flags=st.integers(0, 255),
    state=st.dictionaries(_KEY, _VALUE, max_size=MAX_TRACESTATE_MEMBERS),
)
def test_a_valid_context_round_trips(
    trace_id: str, parent_id: str, flags: int, state: dict[str, str]
) -> None:
    """A generated level-1 traceparent and tracestate come back as written."""
    traceparent = f"00-{trace_id}-{parent_id}-{flags:02x}"
    tracestate = ",".join(f"{k}={v}" for k, v in state.items())
    headers = [("traceparent", traceparent.encode())]
    if state:
        headers.append(("tracestate", tracestate.encode()))
    found = read(headers)
    assert found.context is not None
    assert (traceparent, tracestate or None, ()) == (
        found.context.traceparent,
        found.context.state,
        found.invalid,
    )


ORIGINAL = RawRecord(
    topic="orders",
    partition=2,
    offset=41,
    key=b"k",
    value=b"event bytes",
    headers=(("traceparent", PARENT), ("tracestate", STATE), ("herald.reason", b"earlier")),
)


def test_dead_letters_and_retry_tickets_carry_the_trace_headers_unchanged() -> None:
    """Herald passes the context through: the same traceparent and tracestate on the dead
    letter and the ticket, and the ticket read back gives the retried attempt the same trace."""
    expected = read(ORIGINAL.headers).context
    assert expected is not None
    dead = dead_letter(ORIGINAL, topic="dead", reason="r", detail="d", stage="decode")
    assert expected == read(dead.headers).context

    policy = RetryPolicy(RetrySettings(delays_s=[60]))
    out = policy.schedule(ORIGINAL, notification="n", rounds_done=0, reason="smtp_transient")
    assert [("traceparent", PARENT), ("tracestate", STATE)] == [
        (k, v) for k, v in out.headers if k in ("traceparent", "tracestate")
    ]
    consumed = RawRecord(
        topic=out.topic, partition=0, offset=0, key=out.key, value=out.value, headers=out.headers
    )
    assert expected == read(consumed.headers).context
    assert expected == read(policy.ticket(consumed, {"orders"}).original.headers).context
