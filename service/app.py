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
from service.events.decoder import EventDecoder, TopicBinding, check_envelope
from service.events.schemas import SchemaStore
from service.flow.consumer import Consumer
from service.flow.handler import Pipeline
from service.flow.messages import LocalMessages, Messages, Recipe, WorkerMessages
from service.kafka.admin import ensure_topics
from service.kafka.transactions import TransactionalProducer
from service.metrics import Metrics
from service.outcomes.records import OutcomeCodec
from service.outcomes.retries import RetryPolicy
from service.render.renderer import Renderer
from service.routing import Priority, RoutingTable, load_table
from service.settings import Settings
from service.stores.idempotency import open_store

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
    return Loaded(store=store, table=table, renderer=renderer, bindings=bindings)


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
    """The service: consumer, pipeline, SMTP pool, producer and HTTP endpoint, composed."""

    def __init__(
        self, settings: Settings, *, metrics: Metrics | None = None, registry: Any | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.loaded = load(settings)
        self._registry = registry if registry is not None else registry_client(settings)
        self._consumers: list[Consumer] = []
        self.http_port: int | None = None
        self.started = asyncio.Event()

    @property
    def ready(self) -> bool:
        return bool(self._consumers) and all(c.ready for c in self._consumers)

    def lanes(self, retries: RetryPolicy) -> list[Lane]:
        """The express lane (topics with a route of `processing.express_priority` or above),
        if any; the standard lane with every other event topic; the retry lane.

        The retry topics have a member of their own: in the standard lane their partitions,
        nearly always empty, counted for the assignor like busy ones, and with two instances
        one was handed the retry partitions and a quarter of the event partitions, the other
        the rest (docs/benchmarks.md).
        """
        p = self.settings.processing
        express_events = self.loaded.table.express_events(self.express_priority)
        bindings = self.loaded.bindings
        express = sorted(t for t, b in bindings.items() if b.event_type in express_events)
        standard = sorted(t for t in bindings if t not in express)
        lanes = [
            Lane(name="express", topics=express, max_in_flight=p.express_max_in_flight),
            Lane(name="standard", topics=standard, max_in_flight=p.max_in_flight),
            Lane(name="retry", topics=list(retries.topics), max_in_flight=p.max_in_flight),
        ]
        return [lane for lane in lanes if lane.topics]

    @property
    def express_priority(self) -> Priority | None:
        chosen = self.settings.processing.express_priority
        return None if chosen == "off" else Priority(chosen)

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        k = s.kafka
        began = time.monotonic()
        retries = RetryPolicy(s.retry, k.topic_prefix)
        codec = await self._codec()
        own_topics = [codec.results_topic, codec.dead_letter_topic, *retries.topics]
        await asyncio.to_thread(
            ensure_topics, k.librdkafka(), own_topics, partitions=k.own_topic_partitions
        )
        lanes = self.lanes(retries)
        express = lanes[0].name == "express"
        base_tid = k.transactional_id or f"{k.group_id}-{socket.gethostname()}"
        producers = {
            lane.name: TransactionalProducer(
                {**k.librdkafka(), "client.id": f"{k.client_id}{lane.suffix}-out"},
                base_tid + lane.suffix,
                k.transaction_timeout_ms,
            )
            for lane in lanes
        }
        # With render workers, they compile the templates; this process only falls back on
        # its own copy if none is left, and may compile then.
        warm = [] if s.processing.render_workers else [asyncio.to_thread(self._warm)]
        await asyncio.gather(*warm, *(asyncio.to_thread(p.init) for p in producers.values()))
        async with AsyncExitStack() as stack:
            for lane in lanes:
                # The consumer may have replaced a stuck client meanwhile: close its current one.
                stack.callback(self._close_producer, lane.name, producers[lane.name])
            store = await stack.enter_async_context(
                open_store(s.idempotency, in_flight=sum(lane.max_in_flight for lane in lanes))
            )
            reserved = s.smtp.express_slots if express else 0
            mailer = await stack.enter_async_context(
                Mailer(s.smtp, self.metrics, express_slots=reserved)
            )
            mailer.warm_in_background()
            local = LocalMessages(self.loaded.renderer, s.mail)
            messages: Messages = local
            if s.processing.render_workers:
                recipe = Recipe(s.templates_dir, s.brand, s.mail.default_locale, s.links, s.mail)
                messages = await stack.enter_async_context(
                    WorkerMessages(recipe, s.processing.render_workers, local, s.log.format)
                )
            http = await stack.enter_async_context(
                HttpEndpoint(self.metrics, s.http.host, s.http.port, lambda: self.ready)
            )
            self.http_port = http.port
            pipeline = Pipeline(
                decoder=EventDecoder(
                    self.loaded.bindings,
                    self.loaded.store,
                    self._registry,
                    max_record_bytes=s.processing.max_record_bytes,
                ),
                table=self.loaded.table,
                messages=messages,
                mailer=mailer,
                store=store,
                codec=codec,
                retries=retries,
                metrics=self.metrics,
                express=self.express_priority if express else None,
                # Two per connection: one on the wire, one rendered and ready to go.
                turns=Slots(2 * s.smtp.pool_size, 2 * reserved),
            )
            self._consumers = [
                Consumer(
                    k.model_copy(update={"client_id": k.client_id + lane.suffix}),
                    s.processing.model_copy(update={"max_in_flight": lane.max_in_flight}),
                    lane.topics,
                    pipeline.handle,
                    producers[lane.name],
                    retries,
                    self.metrics,
                    should_pause=lambda: mailer.breaker.is_open,
                    lane=lane.name,
                )
                for lane in lanes
            ]
            log.info(
                "herald started",
                topics=sorted(self.loaded.bindings),
                express_topics=lanes[0].topics if express else [],
                results_topic=codec.results_topic,
                dead_letter_topic=codec.dead_letter_topic,
                retry_topics=retries.topics,
                idempotency=s.idempotency.backend,
                smtp=f"{s.smtp.host}:{s.smtp.port} tls={s.smtp.tls}",
                http=f"http://{s.http.host}:{http.port}/metrics",
            )
            self.started.set()
            try:
                await _run_together(self._consumers, stop)
            finally:
                counts: Counter[str] = Counter()
                for c in self._consumers:
                    counts.update(c.counts)
                log.info(
                    "herald stopped", uptime_s=round(time.monotonic() - began, 1), **dict(counts)
                )

    def _warm(self) -> None:
        t0 = time.perf_counter()
        count = self.loaded.renderer.warm()
        log.info("templates compiled", templates=count, ms=round((time.perf_counter() - t0) * 1000))

    def _close_producer(self, lane: str, initial: TransactionalProducer) -> None:
        current = next((c.producer for c in self._consumers if c.lane == lane), initial)
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
            dead_letter_topic=s.kafka.topic_prefix + s.kafka.dead_letter_topic,
            schema=schema,
            encoding=s.kafka.results_encoding,
            registry_schema_id=schema_id,
            recipient_mode=s.mail.recipient_in_outcomes,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Lane:
    """A consumer of its own in the group: topics, in-flight budget and transactions."""

    name: str
    topics: list[str]
    max_in_flight: int

    @property
    def suffix(self) -> str:
        """Added to the client and transactional ids; none for the standard lane, so an
        upgrade keeps the transactional id and fences the instance it replaces."""
        return "" if self.name == "standard" else f"-{self.name}"


async def _run_together(consumers: list[Consumer], stop: asyncio.Event) -> None:
    """Run every lane until `stop`; a lane that ends on its own (a fatal error) stops the
    others, which drain and commit, and its error is raised."""
    inner = asyncio.Event()
    tasks = [asyncio.create_task(c.run(inner)) for c in consumers]
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
