"""Wiring and lifecycle: load and check everything (`service.loading`), then run until told
to stop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import structlog

from service.delivery.dkim import Signer
from service.delivery.pool import Mailer
from service.delivery.slots import Slots
from service.endpoint import HttpEndpoint
from service.events.budget import Limits
from service.events.decoder import EventDecoder
from service.feedback.processor import FeedbackProcessor
from service.flow.handler import Handler
from service.flow.lane import Lane
from service.flow.messages import LocalMessages, Messages, Recipe
from service.flow.plan import LanePlan, express_priority, plan_lanes
from service.flow.workers import WorkerMessages
from service.kafka.admin import ensure_topics
from service.kafka.records import TopicPartition
from service.kafka.transactions import TransactionalProducer
from service.loading import Loaded, load, registry_client
from service.metrics import Metrics
from service.outcomes.records import OutcomeCodec
from service.outcomes.retries import RetryPolicy
from service.policy.policy import Policy
from service.policy.state import PolicyState
from service.runtime import open_feedback_processor, open_policy, open_public
from service.settings import Settings
from service.stores.idempotency import IdempotencyStore, open_store

log = structlog.get_logger("herald")

__all__ = ["Herald", "Loaded", "load", "registry_client"]


class Herald:
    """The service: lanes, handler, SMTP pool, store, producers and HTTP endpoint, composed."""

    def __init__(
        self, settings: Settings, *, metrics: Metrics | None = None, registry: Any | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.loaded = load(settings)
        self._registry = registry if registry is not None else registry_client(settings)
        self._lanes: list[Lane] = []
        self._policy: PolicyState | None = None
        self.feedback: FeedbackProcessor | None = None
        self.http_port: int | None = None
        self.public_port: int | None = None
        self.started = asyncio.Event()

    @property
    def policy(self) -> PolicyState | None:
        """The policy stage's state while running (its tables, caps and rules)."""
        return self._policy

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        """The partitions this instance holds now, over its lanes."""
        return frozenset(tp for lane in self._lanes for tp in lane.assigned)

    @property
    def ready(self) -> bool:
        lanes = bool(self._lanes) and all(lane.ready for lane in self._lanes)
        policy = self._policy is not None and self._policy.healthy()
        return lanes and policy and not (self.feedback is None or self.feedback.failed)

    async def run(self, stop: asyncio.Event) -> None:
        """Create what is missing, start every part, run the lanes until `stop`, close all."""
        s, k = self.settings, self.settings.kafka
        began = time.monotonic()
        retries = RetryPolicy(s.retry, k.topic_prefix)
        codec = await self._codec()
        dead_letter_topic = k.topic_prefix + k.dead_letter_topic
        feedback_topic = k.topic_prefix + s.policy.feedback_topic
        own_topics = [codec.results_topic, dead_letter_topic, *retries.topics, feedback_topic]
        await asyncio.to_thread(
            ensure_topics, k.librdkafka(), own_topics, partitions=k.own_topic_partitions
        )
        plans = plan_lanes(self.loaded.bindings, self.loaded.table, s.processing, retries.topics)
        producers = await self._producers(plans)
        async with AsyncExitStack() as stack:
            for plan in plans:
                # The lane may have replaced a stuck client meanwhile: close its current one.
                stack.callback(self._close_producer, plan.name, producers[plan.name])
            handler = await self._handler(stack, plans, codec, dead_letter_topic, retries)
            mailer = handler.mailer
            http = await stack.enter_async_context(
                HttpEndpoint(self.metrics, s.http.host, s.http.port, lambda: self.ready)
            )
            self.http_port = http.port
            public = await open_public(stack, s, self.loaded.store, self.loaded.table, self.metrics)
            self.public_port = public.port if public else None
            self._lanes = [
                Lane(
                    k.model_copy(update={"client_id": k.client_id + plan.suffix}),
                    s.processing.model_copy(update={"max_in_flight": plan.max_in_flight}),
                    plan.topics,
                    handler.handle,
                    producers[plan.name],
                    retries,
                    self.metrics,
                    holds=[mailer],
                    lane=plan.name,
                )
                for plan in plans
            ]
            log.info(
                "herald started",
                topics=sorted(self.loaded.bindings),
                express_topics=plans[0].topics if plans[0].name == "express" else [],
                results_topic=codec.results_topic,
                dead_letter_topic=dead_letter_topic,
                retry_topics=retries.topics,
                idempotency=s.idempotency.backend,
                smtp=f"{s.smtp.host}:{s.smtp.port} tls={s.smtp.tls}",
                http=f"http://{s.http.host}:{http.port}/metrics",
                dkim=_dkim_summary(self.loaded.signer),
            )
            self.started.set()
            try:
                await _run_together(self._lanes, stop)
            finally:
                counts: Counter[str] = Counter()
                for lane in self._lanes:
                    counts.update(lane.counts)
                uptime_s = round(time.monotonic() - began, 1)
                log.info("herald stopped", uptime_s=uptime_s, **dict(counts))

    async def _producers(self, plans: list[LanePlan]) -> dict[str, TransactionalProducer]:
        """One transactional producer per lane, initialised while the templates compile."""
        k = self.settings.kafka
        base_tid = k.transactional_id or f"{k.group_id}-{socket.gethostname()}"
        producers = {
            plan.name: TransactionalProducer(
                {**k.librdkafka(), "client.id": f"{k.client_id}{plan.suffix}-out"},
                base_tid + plan.suffix,
                k.transaction_timeout_ms,
            )
            for plan in plans
        }
        # With render workers, they compile the templates; this process only falls back on
        # its own copy if none is left, and may compile then.
        warm = [] if self.settings.processing.render_workers else [asyncio.to_thread(self._warm)]
        await asyncio.gather(*warm, *(asyncio.to_thread(p.init) for p in producers.values()))
        return producers

    async def _handler(
        self,
        stack: AsyncExitStack,
        plans: list[LanePlan],
        codec: OutcomeCodec,
        dead_letter_topic: str,
        retries: RetryPolicy,
    ) -> Handler:
        """The stages, their store, pool and render workers opened on `stack`."""
        s = self.settings
        store: IdempotencyStore = await stack.enter_async_context(
            open_store(s.idempotency, in_flight=sum(plan.max_in_flight for plan in plans))
        )
        express = express_priority(s.processing) if plans[0].name == "express" else None
        reserved = s.smtp.express_slots if express else 0
        mailer = await stack.enter_async_context(
            Mailer(s.smtp, self.metrics, express_slots=reserved, signer=self.loaded.signer)
        )
        mailer.warm_in_background()
        self._policy = await open_policy(
            stack, s, self.loaded.store, self.loaded.table, self.metrics
        )
        self.feedback = await open_feedback_processor(
            stack, s, self.loaded.store, self.metrics, codec, self._policy.caps
        )
        local = LocalMessages(self.loaded.renderer, s.mail, self.loaded.signer)
        messages: Messages = local
        if s.processing.render_workers:
            recipe = Recipe(
                s.templates_dir,
                s.brand,
                s.mail.default_locale,
                s.links,
                s.mail,
                self.loaded.signer,
            )
            messages = await stack.enter_async_context(
                WorkerMessages(
                    recipe,
                    s.processing.render_workers,
                    local,
                    s.log.format,
                    timeout_s=s.processing.render_timeout_s,
                )
            )
        decoder = EventDecoder(
            self.loaded.bindings,
            self.loaded.store,
            self._registry,
            max_record_bytes=s.processing.max_record_bytes,
            limits=Limits(
                max_string_chars=s.processing.max_string_chars,
                max_array_items=s.processing.max_array_items,
            ),
            default_locale=s.mail.default_locale,
        )
        return Handler(
            decoder=decoder,
            table=self.loaded.table,
            policy=Policy(store, self._policy, self.metrics),
            messages=messages,
            mailer=mailer,
            store=store,
            codec=codec,
            dead_letter_topic=dead_letter_topic,
            retries=retries,
            smtp=s.smtp,
            metrics=self.metrics,
            express=express,
            # Two per connection: one on the wire, one rendered and ready to go.
            turns=Slots(2 * s.smtp.pool_size, 2 * reserved),
            max_internal_attempts=s.processing.max_internal_attempts,
        )

    def _warm(self) -> None:
        t0 = time.perf_counter()
        count = self.loaded.renderer.warm()
        log.info("templates compiled", templates=count, ms=round((time.perf_counter() - t0) * 1000))

    def _close_producer(self, lane: str, initial: TransactionalProducer) -> None:
        current = next((x.committer.producer for x in self._lanes if x.lane == lane), initial)
        current.close()

    async def _codec(self) -> OutcomeCodec:
        s = self.settings
        results_topic = s.kafka.topic_prefix + s.kafka.results_topic
        schema = OutcomeCodec.outcome_schema(self.loaded.store)
        schema_id = None
        if s.kafka.results_encoding == "confluent":
            from confluent_kafka.schema_registry import Schema

            assert self._registry is not None  # registry_client() insists on one
            schema_id = await self._registry.register_schema(
                f"{results_topic}-value", Schema(schema.canonical, "AVRO")
            )
        return OutcomeCodec(
            results_topic=results_topic,
            schema=schema,
            encoding=s.kafka.results_encoding,
            registry_schema_id=schema_id,
            recipient_mode=s.mail.recipient_in_outcomes,
            recipient_hash_key=(
                s.mail.recipient_hash_secret.get_secret_value().encode()
                if s.mail.recipient_hash_secret
                else None
            ),
        )


async def _run_together(lanes: list[Lane], stop: asyncio.Event) -> None:
    """Run every lane until `stop`; a lane that ends on its own (a fatal error) stops the
    others, which drain and commit, and its error is raised."""
    inner = asyncio.Event()
    tasks = [asyncio.create_task(lane.run(inner)) for lane in lanes]
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        inner.set()
        await asyncio.wait(tasks)
    finally:
        stopping.cancel()
        for t in tasks:
            t.cancel()  # only still running if we were cancelled ourselves
    for t in tasks:
        if not t.cancelled() and (exc := t.exception()) is not None:
            raise exc


def _dkim_summary(signer: Signer | None) -> str:
    """Where verifiers find the key, and its size; no key material."""
    if signer is None:
        return "off"
    name = (signer.selector + b"._domainkey." + signer.domain).decode()
    return f"{name} {signer.kind}"
