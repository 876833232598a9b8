"""The decision table, row by row: each error of each stage leads where the table says."""

from __future__ import annotations

import pytest

from service.errors import (
    DecodeError,
    DeliveryUnknownError,
    HeraldError,
    InternalError,
    InvalidRecipientError,
    MalformedTicket,
    PermanentDeliveryError,
    RecordTooLarge,
    RenderError,
    RouteRemoved,
    RoutingError,
    SchemaRegistryUnavailable,
    SmtpUnavailable,
    StoreUnavailable,
    TransientDeliveryError,
)
from service.outcomes.decisions import (
    FALLBACK,
    TABLE,
    Kind,
    Next,
    Stage,
    Verdict,
    decide,
    kind_of,
)
from service.outcomes.status import Status


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (SchemaRegistryUnavailable("down"), Kind.UNAVAILABLE),
        (StoreUnavailable("down"), Kind.UNAVAILABLE),
        (SmtpUnavailable("breaker open"), Kind.UNAVAILABLE),
        (TransientDeliveryError("connect", server_wide=True), Kind.UNAVAILABLE),
        (TransientDeliveryError("SMTP 421", code=421, server_wide=True), Kind.UNAVAILABLE),
        (DeliveryUnknownError("lost after DATA"), Kind.AMBIGUOUS),
        (TransientDeliveryError("SMTP 451", code=451), Kind.TRANSIENT),
        (DecodeError("garbage"), Kind.RECORD),
        (RecordTooLarge("huge"), Kind.RECORD),
        (RoutingError("no route"), Kind.RECORD),
        (RouteRemoved("gone"), Kind.RECORD),
        (MalformedTicket("headers"), Kind.RECORD),
        (RenderError("template"), Kind.RECORD),
        (PermanentDeliveryError("SMTP 550", code=550), Kind.PERMANENT),
        (InvalidRecipientError("not an address"), Kind.PERMANENT),
        (InternalError("KeyError: 'x'"), Kind.INTERNAL),
    ],
)
def test_each_error_has_the_kind_its_attributes_give(error: HeraldError, kind: Kind) -> None:
    assert kind is kind_of(error)


def _row(stage: Stage, error: HeraldError, *, tries: bool, rounds: bool) -> Verdict:
    return decide(stage, error, tries_left=tries, rounds_left=rounds)


@pytest.mark.parametrize("stage", list(Stage))
def test_row_internal_with_tries_left_is_tried_again(stage: Stage) -> None:
    """Row 1: an unforeseen error, at any stage, is tried again while tries are left."""
    verdict = _row(stage, InternalError("x"), tries=True, rounds=True)
    assert Verdict(status=None, reason=None, next=Next.RETRY_NOW) == verdict


@pytest.mark.parametrize("stage", list(Stage))
def test_row_internal_without_tries_dead_letters(stage: Stage) -> None:
    """Row 2: then the record (or notification) is dead-lettered, never a crash."""
    verdict = _row(stage, InternalError("x"), tries=False, rounds=True)
    assert Verdict(status=Status.DEAD_LETTERED, reason=None, next=Next.DEAD_LETTER) == verdict


@pytest.mark.parametrize("stage", list(Stage))
def test_row_unavailable_waits_at_every_stage(stage: Stage) -> None:
    """Row 3: a dependency down as a whole is waited for, with no try used up."""
    verdict = _row(stage, StoreUnavailable("down"), tries=False, rounds=False)
    assert Verdict(status=None, reason=None, next=Next.WAIT) == verdict


def test_row_ambiguous_delivery_is_unknown_and_never_retried() -> None:
    """Row 4: lost after the body left (RFC 1047): UNKNOWN, whatever tries are left."""
    verdict = _row(Stage.DELIVER, DeliveryUnknownError("lost"), tries=True, rounds=True)
    assert Verdict(status=Status.UNKNOWN, reason=None, next=Next.TERMINAL) == verdict


def test_row_transient_with_tries_left_is_retried_now() -> None:
    """Row 5."""
    verdict = _row(Stage.DELIVER, TransientDeliveryError("451"), tries=True, rounds=False)
    assert Next.RETRY_NOW is verdict.next
    assert verdict.status is None


def test_row_transient_without_tries_goes_to_a_retry_round() -> None:
    """Row 6: no outcome yet; a ticket to the next retry topic."""
    verdict = _row(Stage.DELIVER, TransientDeliveryError("451"), tries=False, rounds=True)
    assert Verdict(status=None, reason=None, next=Next.RETRY_LATER) == verdict


def test_row_transient_with_nothing_left_fails_and_keeps_the_bytes() -> None:
    """Row 7."""
    verdict = _row(Stage.DELIVER, TransientDeliveryError("451"), tries=False, rounds=False)
    assert Verdict(status=Status.FAILED, reason="retries_exhausted", next=Next.DEAD_LETTER) == (
        verdict
    )


@pytest.mark.parametrize("stage", [Stage.RENDER, Stage.DELIVER])
def test_row_permanent_fails_the_notification(stage: Stage) -> None:
    """Row 8: a 5xx, or an address no server takes; the record's bytes are not at fault."""
    for error in (PermanentDeliveryError("550"), InvalidRecipientError("bad")):
        verdict = _row(stage, error, tries=True, rounds=True)
        assert Verdict(status=Status.FAILED, reason=None, next=Next.TERMINAL) == verdict


@pytest.mark.parametrize("stage", [Stage.DECODE, Stage.ROUTE, Stage.TICKET, Stage.RENDER])
def test_row_record_fault_dead_letters(stage: Stage) -> None:
    """Row 9: the record's own data: DEAD_LETTERED, its bytes kept for a redrive."""
    verdict = _row(stage, RenderError("x"), tries=True, rounds=True)
    assert Verdict(status=Status.DEAD_LETTERED, reason=None, next=Next.DEAD_LETTER) == verdict


def test_what_no_row_foresees_keeps_the_bytes() -> None:
    """A transient error while decoding matches no row: dead-lettered, nothing lost."""
    assert FALLBACK == _row(Stage.DECODE, TransientDeliveryError("?"), tries=True, rounds=True)


def test_every_row_is_reachable() -> None:
    """No row is shadowed by an earlier one: each wins for some input."""
    errors = {
        Kind.INTERNAL: InternalError("x"),
        Kind.UNAVAILABLE: StoreUnavailable("x"),
        Kind.AMBIGUOUS: DeliveryUnknownError("x"),
        Kind.TRANSIENT: TransientDeliveryError("x"),
        Kind.RECORD: RenderError("x"),
        Kind.PERMANENT: PermanentDeliveryError("x"),
    }
    for row in TABLE:
        stage = sorted(row.stages)[0]
        tries = row.tries.value != "none"
        rounds = row.rounds.value != "none"
        assert row.verdict is decide(stage, errors[row.kind], tries_left=tries, rounds_left=rounds)
