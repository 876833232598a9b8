"""Wiring and lifecycle: load and check everything, then run until told to stop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import structlog

from service.delivery.pool import Mailer
from service.delivery.slots import Slots
from service.endpoint import HttpEndpoint
from service.errors import ConfigError
from service.events.budget import Limits
from service.events.decoder import EventDecoder
from service.events.model import TopicBinding, check_envelope
from service.events.schemas import SchemaStore
from service.flow.handler import Handler
from service.flow.lane import Lane
from service.flow.messages import LocalMessages, Messages, Recipe
from service.flow.plan import LanePlan, express_priority, plan_lanes
from service.flow.workers import WorkerMessages
from service.kafka.admin import ensure_topics
from service.kafka.records import TopicPartition
from service.kafka.transactions import TransactionalProducer
from service.metrics import Metrics
from service.outcomes.records import OutcomeCodec
from service.outcomes.retries import RetryPolicy
from service.policy.policy import Policy
from service.policy.state import PolicyState, address_key
from service.render.renderer import Renderer
from service.routing import RoutingTable, load_table
from service.runtime import open_policy, open_public
from service.settings import Settings
from service.stores.idempotency import IdempotencyStore, open_store

log = structlog.get_logger("herald")


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    """Everything read from disk at start-up, cross-checked."""

    store: SchemaStore
    table: RoutingTable
    renderer: Renderer
    bindings: dict[str, TopicBinding]


def load(settings: Settings) -> Loaded:
    """Read schemas, routing table and templates; raise ConfigError on the first problem."""
    store = SchemaStore.load(settings.schemas_dir)
    table = load_table(settings.routing_file)
    renderer = Renderer(
        settings.templates_dir, settings.brand, settings.mail.default_locale, settings.links
    )
    OutcomeCodec.outcome_schema(store)
    bindings = _bindings(settings, store, table, renderer)
    _check_registry(settings, bindings)
    _check_unsubscribe(settings, table)
    address_key(settings)
    return Loaded(store=store, table=table, renderer=renderer, bindings=bindings)


def _bindings(
    settings: Settings, store: SchemaStore, table: RoutingTable, renderer: Renderer
) -> dict[str, TopicBinding]:
    """Each event type's topic, reader schema and encoding, its templates checked."""
    file = str(settings.routing_file)
    bindings: dict[str, TopicBinding] = {}
    for event_type, spec in table.events.items():
        reader = store.reader(spec.schema_)
        if reader is None:
            raise ConfigError(
                file,
                f"events.{event_type}.schema",
                f"no schema named {spec.schema_!r}",
                f"use one of {_event_schemas(store)} or add "
                f"{settings.schemas_dir}/{spec.schema_}.avsc",
            )
        if missing := check_envelope(reader):
            raise ConfigError(
                str(reader.path),
                "fields",
                f"event schema lacks envelope fields {missing}",
                "every event carries event_id, occurred_at, recipient and payload",
            )
        topic = settings.kafka.topic_prefix + table.topic_of(event_type)
        if topic in bindings:
            raise ConfigError(
                file,
                f"events.{event_type}.topic",
                f"topic {topic!r} is already bound to {bindings[topic].event_type!r}",
                "give each event type its own topic",
            )
        for i, route in enumerate(table.routes[event_type]):
            if missing := renderer.missing(route.spec.template):
                raise ConfigError(
                    file,
                    f"events.{event_type}.notifications[{i}].template",
                    f"template {route.spec.template!r} is missing {missing}",
                    "create those files or correct the template name",
                )
        bindings[topic] = TopicBinding(
            topic=topic, event_type=event_type, reader=reader, encoding=spec.encoding
        )
    return bindings


def _check_registry(settings: Settings, bindings: dict[str, TopicBinding]) -> None:
    needs_registry = settings.kafka.results_encoding == "confluent" or any(
        b.encoding == "confluent" for b in bindings.values()
    )
    if needs_registry and not settings.registry.url:
        raise ConfigError(
            "environment",
            "HERALD_REGISTRY__URL",
            "a topic (or the results topic) uses the "
            "`confluent` encoding but no schema registry is configured",
            "set HERALD_REGISTRY__URL, or use `encoding: single-object` in the routing table "
            "and HERALD_KAFKA__RESULTS_ENCODING=single-object",
        )


def _check_unsubscribe(settings: Settings, table: RoutingTable) -> None:
    """Optional mail carries a one-click link that must not be forgeable: signed, by a key."""
    optional = sorted(
        r.spec.type for routes in table.routes.values() for r in routes if r.spec.category.optional
    )
    if not optional:
        return
    links = settings.links
    if "{token}" not in links.unsubscribe_url:
        raise ConfigError(
            "environment",
            "HERALD_LINKS__UNSUBSCRIBE_URL",
            f"optional routes ({optional[0]}, …) need a signed link, and the URL has no {{token}}",
            "add &token={token} to HERALD_LINKS__UNSUBSCRIBE_URL",
        )
    if links.unsubscribe_secret is None:
        raise ConfigError(
            "environment",
            "HERALD_LINKS__UNSUBSCRIBE_SECRET",
            f"optional routes ({optional[0]}, …) carry unsubscribe links and no key signs them",
            "set HERALD_LINKS__UNSUBSCRIBE_SECRET to a random secret of 32 bytes or more "
            "(e.g. `openssl rand -base64 32`)",
        )


def _event_schemas(store: SchemaStore) -> list[str]:
    """Schemas that carry the event envelope (not Money, Recipient or the outcome)."""
    return [n for n in store.names() if (s := store.reader(n)) and not check_envelope(s)]


def registry_client(settings: Settings) -> Any | None:
    """A Schema Registry client when one is configured."""
    if not settings.registry.url:
        return None  # load() made sure no topic needs one
    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

    conf: dict[str, str] = {"url": settings.registry.url}
    if settings.registry.basic_auth_user_info:
        conf["basic.auth.user.info"] = settings.registry.basic_auth_user_info.get_secret_value()
    return AsyncSchemaRegistryClient(conf)


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
        return lanes and self._policy is not None and self._policy.healthy()

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
            Mailer(s.smtp, self.metrics, express_slots=reserved)
        )
        mailer.warm_in_background()
        self._policy = await open_policy(
            stack, s, self.loaded.store, self.loaded.table, self.metrics
        )
        local = LocalMessages(self.loaded.renderer, s.mail)
        messages: Messages = local
        if s.processing.render_workers:
            recipe = Recipe(s.templates_dir, s.brand, s.mail.default_locale, s.links, s.mail)
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
