"""Poison records mixed with good ones: each gets exactly one outcome and blocks nothing.

Garbage bytes, an unknown schema fingerprint, an empty value, a template that needs a variable
the event lacks, a display name and a field over the string budget, and a 10 MB field, spread
among the good records of the same topics and keys. Good records must all be SENT
(FAILED for the `perm…` recipients the server refuses), poison DEAD_LETTERED with one copy on
the dead-letter topic (the 10 MB record as `record_too_large`, over the default size limit).
"""

from __future__ import annotations

from tests.chaos.conftest import Chaos
from tests.chaos.workload import POISON_KINDS


def test_poison_records_mixed_with_good_ones(chaos: Chaos) -> None:
    scale = chaos.scale
    with chaos.run("poison records") as run:
        run.workload.good(scale.records)
        for kind in POISON_KINDS:
            for _ in range(scale.huge if kind == "huge_field" else scale.poison_each):
                run.workload.poison(kind)
        run.workload.shuffle_poison()
        run.produce()
        run.start("a")
        report = run.finish()
    assert not report.violations(), report.summary()
    huge = POISON_KINDS.count("huge_field")
    assert report.poison == (len(POISON_KINDS) - huge) * scale.poison_each + huge * scale.huge
