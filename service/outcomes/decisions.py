"""The decision table: what an error at a stage leads to, read off the error's attributes.

Each row matches a stage, a kind of error (from `kind_of`, which reads only the attributes in
`service.errors`), whether the notification has in-process tries left and whether a retry round
is left; the first row that matches gives the status, the reason and the next step. The flow
carries the step out; nothing else decides what a failure means.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from service.errors import HeraldError
from service.outcomes.status import Status


class Stage(StrEnum):
    """Where in a record's way an error arose; written to dead-letter headers as `stage`."""

    DECODE = "decode"
    ROUTE = "route"
    TICKET = "retry"
    """Reading a retry record's ticket, or finding its route again."""
    POLICY = "policy"
    RENDER = "render"
    DELIVER = "deliver"


RECORD_STAGES = frozenset({Stage.DECODE, Stage.ROUTE, Stage.TICKET})
"""Before the record became notifications: its outcome is the record's own."""


class Kind(StrEnum):
    """An error as the table sees it; `kind_of` derives it from the error's attributes."""

    INTERNAL = "internal"
    """not foreseen: a bug or an unforeseen failure; tried again a few times."""
    UNAVAILABLE = "unavailable"
    """server_wide: a dependency (registry, store, relay) is down as a whole."""
    AMBIGUOUS = "ambiguous"
    """not outcome_known: the step may have taken effect (RFC 1047)."""
    TRANSIENT = "transient"
    """retryable: the same step may succeed later."""
    RECORD = "record"
    """dead_letter: the record's own data is at fault."""
    PERMANENT = "permanent"
    """None of the above: final for this notification."""


class Next(StrEnum):
    """What the flow does after the decision."""

    WAIT = "wait"
    """Wait for the dependency, then the same step again; no try is used up."""
    RETRY_NOW = "retry_now"
    """Back off briefly, then the same step again in this process."""
    RETRY_LATER = "retry_later"
    """A ticket to the next retry topic; the notification has no outcome yet."""
    DEAD_LETTER = "dead_letter"
    """The outcome, and the record's bytes to the dead-letter topic (once per record)."""
    TERMINAL = "terminal"
    """The outcome, and nothing else."""


class Left(StrEnum):
    """Whether a row needs tries or rounds left, none left, or does not care."""

    ANY = "any"
    SOME = "some"
    NONE = "none"

    def matches(self, left: bool) -> bool:
        return self is Left.ANY or left is (self is Left.SOME)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What a failure leads to."""

    status: Status | None
    """The outcome's status; None while the notification goes on (wait, retry)."""
    reason: str | None
    """The outcome's reason; None for the error's own `reason`."""
    next: Next


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One line of the table."""

    stages: frozenset[Stage]
    kind: Kind
    tries: Left = Left.ANY
    """In-process tries left for this notification."""
    rounds: Left = Left.ANY
    """Retry rounds left (by count and by the event's age)."""
    verdict: Verdict


_ALL = frozenset(Stage)
_NOTIFICATION = frozenset({Stage.POLICY, Stage.RENDER, Stage.DELIVER})

TABLE: tuple[Row, ...] = (
    Row(
        stages=_ALL,
        kind=Kind.INTERNAL,
        tries=Left.SOME,
        verdict=Verdict(status=None, reason=None, next=Next.RETRY_NOW),
    ),
    Row(
        stages=_ALL,
        kind=Kind.INTERNAL,
        tries=Left.NONE,
        verdict=Verdict(status=Status.DEAD_LETTERED, reason=None, next=Next.DEAD_LETTER),
    ),
    Row(
        stages=_ALL,
        kind=Kind.UNAVAILABLE,
        verdict=Verdict(status=None, reason=None, next=Next.WAIT),
    ),
    Row(
        stages=frozenset({Stage.DELIVER}),
        kind=Kind.AMBIGUOUS,
        verdict=Verdict(status=Status.UNKNOWN, reason=None, next=Next.TERMINAL),
    ),
    Row(
        stages=frozenset({Stage.DELIVER}),
        kind=Kind.TRANSIENT,
        tries=Left.SOME,
        verdict=Verdict(status=None, reason=None, next=Next.RETRY_NOW),
    ),
    Row(
        stages=frozenset({Stage.DELIVER}),
        kind=Kind.TRANSIENT,
        tries=Left.NONE,
        rounds=Left.SOME,
        verdict=Verdict(status=None, reason=None, next=Next.RETRY_LATER),
    ),
    Row(
        stages=frozenset({Stage.DELIVER}),
        kind=Kind.TRANSIENT,
        tries=Left.NONE,
        rounds=Left.NONE,
        verdict=Verdict(status=Status.FAILED, reason="retries_exhausted", next=Next.DEAD_LETTER),
    ),
    Row(
        stages=_NOTIFICATION,
        kind=Kind.PERMANENT,
        verdict=Verdict(status=Status.FAILED, reason=None, next=Next.TERMINAL),
    ),
    Row(
        stages=_ALL,
        kind=Kind.RECORD,
        verdict=Verdict(status=Status.DEAD_LETTERED, reason=None, next=Next.DEAD_LETTER),
    ),
)
FALLBACK = Verdict(status=Status.DEAD_LETTERED, reason=None, next=Next.DEAD_LETTER)
"""For what no row foresees (a permanent error while decoding, say): keep the bytes."""


def kind_of(error: HeraldError) -> Kind:
    """The error's kind, from its attributes alone, most telling first."""
    if not error.foreseen:
        return Kind.INTERNAL
    if error.server_wide:
        return Kind.UNAVAILABLE
    if not error.outcome_known:
        return Kind.AMBIGUOUS
    if error.retryable:
        return Kind.TRANSIENT
    if error.dead_letter:
        return Kind.RECORD
    return Kind.PERMANENT


def decide(stage: Stage, error: HeraldError, *, tries_left: bool, rounds_left: bool) -> Verdict:
    """The verdict of the first row matching the stage, the error, and what is left."""
    kind = kind_of(error)
    for row in TABLE:
        if (
            stage in row.stages
            and row.kind is kind
            and row.tries.matches(tries_left)
            and row.rounds.matches(rounds_left)
        ):
            return row.verdict
    return FALLBACK
