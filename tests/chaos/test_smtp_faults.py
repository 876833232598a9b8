"""The mail server misbehaving: down, 421 at connect or MAIL, 451 at RCPT, 550 for some
recipients, the connection cut after DATA, replies slower than usual or than the client waits.

Outages and 4xx replies are transient: every notification to a deliverable address must end
SENT once the server is back (quick retries, retry topics, the breaker pausing consumption).
550 is permanent: FAILED at once. A cut after DATA, or a reply that never comes, may have
delivered the message (RFC 1047): UNKNOWN, and never sent again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.chaos.conftest import Chaos
from tests.chaos.harness import Run
from tests.chaos.smtp import Listener
from tests.chaos.workload import GOOD

MAYBE_UNKNOWN = frozenset({"SENT", "UNKNOWN"})
POOL_SIZE = 4
"""Herald's default `smtp.pool_size`: connections that one abrupt stop can cut."""


@dataclass(frozen=True)
class SmtpFault:
    name: str
    on: Callable[[Run], None]
    off: Callable[[Run], None]
    allowed: frozenset[str] = GOOD
    perm_every: int = 20
    whole_run: bool = False
    """On before the first record and off after the last, rather than a window mid-run."""
    cuts: bool = False
    """Switching the listener drops the connections open at that moment; a message in DATA
    then may or may not have arrived: UNKNOWN, at most one per pooled connection."""


def _set(**faults: object) -> Callable[[Run], None]:
    def apply(run: Run) -> None:
        for k, v in faults.items():
            setattr(run.smtp.faults, k, v)

    return apply


def _listener(which: Listener) -> Callable[[Run], None]:
    return lambda run: run.smtp.set_listener(which)


FAULTS = [
    SmtpFault("server down", _listener("down"), _listener("accept"), MAYBE_UNKNOWN, cuts=True),
    SmtpFault("421 at connect", _listener("refuse"), _listener("accept"), MAYBE_UNKNOWN, cuts=True),
    SmtpFault("421 at MAIL", _set(mail_421=True), _set(mail_421=False)),
    SmtpFault("451 at RCPT", _set(rcpt_451=True), _set(rcpt_451=False)),
    # One user in four has an address the server refuses, all run long.
    SmtpFault("550 for some recipients", _set(), _set(), perm_every=4, whole_run=True),
    SmtpFault(
        "connection closed after DATA",
        _set(drop_after_data=0.1),
        _set(drop_after_data=0.0),
        allowed=MAYBE_UNKNOWN,
        whole_run=True,
    ),
    SmtpFault("slow (300 ms per message)", _set(slow_ms=300), _set(slow_ms=0)),
    SmtpFault(
        "slower than the client timeout (4 s > 3 s)",
        _set(slow_ms=4000),
        _set(slow_ms=0),
        allowed=MAYBE_UNKNOWN,
    ),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_smtp_fault(chaos: Chaos, fault: SmtpFault) -> None:
    scale = chaos.scale
    with chaos.run(f"SMTP: {fault.name}") as run:
        run.workload._perm_every = fault.perm_every
        run.workload.good(scale.records, allowed=fault.allowed)
        if fault.whole_run:
            fault.on(run)
        run.produce(rate=scale.rate)
        run.start("a")
        if fault.whole_run:
            run.wait_progress(1.0)
            fault.off(run)
        else:
            run.wait_progress(0.2)
            with run.fault(fault.name):
                fault.on(run)
                run.sleep(scale.fault_s)
                fault.off(run)
        if fault.cuts:
            run.finish_checks.append(
                lambda r: {
                    "UNKNOWN beyond the transactions cut by the stop": max(0, r.unknown - POOL_SIZE)
                }
            )
        if fault.name == "connection closed after DATA":
            # Each cut message was taken by the server: it must be reported UNKNOWN, not resent.
            cut = run.smtp.events["dropped_after_data"]
            run.finish_checks.append(
                lambda r: {"cut after DATA but not reported UNKNOWN": abs(cut - r.unknown_received)}
            )
        report = run.finish()
    assert not report.violations(), report.summary()
