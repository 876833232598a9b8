"""Critical mail under a relay pace that bulk mail saturates, on a real broker and a real SMTP
server: one-time codes keep their reserved share and go at once, while bulk drains with what
the reserve leaves. Prints each code's latency from production to the relay's acceptance."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from service.app import Loaded
from service.outcomes.records import decode_outcome
from service.testing import SmtpServer
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for
from tests.integration.test_policy_stage import _event

BULK = 200
CODES = 10


async def test_one_time_codes_keep_their_share_while_bulk_saturates_the_relay(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    """A relay of 20/s, burst 5, a fifth of it reserved for critical mail, and 200 mentions
    waiting: the mentions take what the reserve leaves, and ten one-time codes produced every
    half second meanwhile are all sent, none deferred, each at its first asking."""
    settings = make_settings(
        pace={"relay": {"rate": "20/s", "burst": 5}, "critical_share": 0.2, "hold_s": 0.5}
    )
    create_topics(settings)
    produce(
        settings,
        [
            _event(loaded, "comment.mentioned", f"u-{i}", f"bulk{i}@example.com")
            for i in range(BULK)
        ],
    )
    produced: dict[str, float] = {}
    async with running(settings) as herald:
        registry = herald.metrics.registry

        def admitted(share: str) -> float:
            return registry.get_sample_value("herald_pace_admitted_total", {"share": share}) or 0

        await wait_for(lambda: admitted("bulk") >= 20, what="bulk mail flowing")
        for i in range(CODES):
            email = f"code{i}@example.com"
            produce(settings, [_event(loaded, "login.otp_requested", f"c-{i}", email)])
            produced[email] = time.monotonic()
            await asyncio.sleep(0.5)
        await wait_for(
            lambda: produced.keys() <= {to for m in smtp.received for to in m.envelope_to},
            what="every code at the relay",
        )
        bulk_while_codes = admitted("bulk")
        outcomes = await read_topic(settings, "notification.outcomes", BULK + CODES, timeout_s=90)
        decisions = {
            (m.labels["decision"], m.labels["category"]): m.value
            for metric in registry.collect()
            if metric.name == "herald_policy_decisions"
            for m in metric.samples
            if m.name.endswith("_total")
        }
    codes = [
        o
        for o in (decode_outcome(m.value(), loaded.store) for m in outcomes)
        if o["notification_type"] == "security.one_time_code"
    ]
    assert ["SENT"] * CODES == [o["status"] for o in codes]
    assert decisions.get(("now", "security")) == CODES
    assert ("later", "security") not in decisions, "no code waited for a later round"
    assert bulk_while_codes < BULK, "bulk was still waiting while the codes went"
    accepted = {to: m.ended for m in smtp.received for to in m.envelope_to}
    latency_ms = sorted((accepted[e] - produced[e]) * 1000 for e in produced)
    mentions = sorted(m.ended for m in smtp.received if m.envelope_to[0].startswith("b"))
    rate = (len(mentions) - 1) / (mentions[-1] - mentions[0])
    print(
        f"codes: p50 {statistics.median(latency_ms):.0f} ms, max {latency_ms[-1]:.0f} ms "
        f"({', '.join(f'{ms:.0f}' for ms in latency_ms)}) "
        f"from production to acceptance; bulk at {rate:.1f}/s against the relay's 20/s "
        f"({len(mentions)} mentions)"
    )
