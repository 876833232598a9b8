"""Loading at start-up: schemas, the routing table and templates read from disk and
cross-checked against the settings, so a mistake stops Herald before it consumes anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.delivery.dkim import Signer, signer
from service.errors import ConfigError
from service.events.model import TopicBinding, check_envelope
from service.events.schemas import SchemaStore
from service.outcomes.records import OutcomeCodec
from service.policy.state import address_key
from service.render.renderer import Renderer
from service.routing import RoutingTable, load_table
from service.settings import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    """Everything read from disk at start-up, cross-checked."""

    store: SchemaStore
    table: RoutingTable
    renderer: Renderer
    bindings: dict[str, TopicBinding]
    signer: Signer | None = None
    """DKIM's, its key read and checked; None when signing is off."""


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
    return Loaded(
        store=store,
        table=table,
        renderer=renderer,
        bindings=bindings,
        signer=signer(settings.dkim, settings.mail),
    )


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
