"""The long-lived parts `herald run` opens beside its lanes: the policy stage's state (tables
restored from their topics, caps, pace), the public listener (one-click unsubscribe, the
provider webhooks), the bounce address's SMTP listener, and the feedback processor
(corrections and suppressions from feedback)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from service.events.schemas import SchemaStore
from service.feedback.listener import BounceListener
from service.feedback.model import feedback_codec
from service.feedback.processor import FeedbackProcessor
from service.feedback.publisher import FeedbackPublisher
from service.feedback.routes import FeedbackWebhooks
from service.kafka.admin import state_topics
from service.metrics import Metrics
from service.outcomes.records import OutcomeCodec
from service.policy.pace import Pace, PaceMetrics
from service.policy.state import PolicyState, address_key
from service.public import PublicServer, start_public
from service.render.renderer import unsubscribe_keys
from service.routing import RoutingTable
from service.settings import Settings
from service.stores.caps import CapStore
from service.stores.pace import open_pace_store
from service.stores.running import codecs, running_stores


async def open_policy(
    stack: AsyncExitStack,
    settings: Settings,
    schemas: SchemaStore,
    table: RoutingTable,
    metrics: Metrics,
) -> PolicyState:
    """The state, its tables caught up with their topics; closed with `stack`."""
    s = settings
    live = await stack.enter_async_context(running_stores(s, schemas, metrics))
    pace_store = await stack.enter_async_context(
        open_pace_store(s.pace, redis_url=s.idempotency.redis_url.get_secret_value())
    )
    return PolicyState(
        tables=live.tables,
        caps=live.caps,
        address_key=address_key(s),
        categories=table.categories,
        pace=Pace(s.pace, pace_store, metrics=PaceMetrics(metrics.registry)),
        hold_s=s.pace.hold_s,
        healthy=lambda: live.healthy,
    )


async def open_public(
    stack: AsyncExitStack,
    settings: Settings,
    schemas: SchemaStore,
    table: RoutingTable,
    metrics: Metrics,
) -> PublicServer | None:
    """The public listener for one-click unsubscribe of the table's optional routes; None
    when it is disabled."""
    categories = {
        r.spec.type: r.spec.category.value
        for routes in table.routes.values()
        for r in routes
        if r.spec.category.optional
    }
    keys = unsubscribe_keys(settings.links)
    feedback = await stack.enter_async_context(
        FeedbackPublisher(
            settings.kafka,
            settings.policy,
            feedback_codec(schemas),
            timeout_s=settings.feedback.publish_timeout_s,
        )
    )
    if settings.feedback.bounce_domain:
        await stack.enter_async_context(BounceListener(settings.feedback, feedback))
    webhooks = FeedbackWebhooks(settings.feedback, feedback).routes
    return await start_public(settings, keys, schemas, metrics, categories, stack, routes=webhooks)


async def open_feedback_processor(
    stack: AsyncExitStack,
    settings: Settings,
    schemas: SchemaStore,
    metrics: Metrics,
    outcomes: OutcomeCodec,
    caps: CapStore,
) -> FeedbackProcessor:
    """The feedback processor, consuming until `stack` closes: corrections on the results
    topic (through `outcomes`, so they are written as the outcomes are), suppressions on
    theirs, soft bounces counted in `caps` (the policy stage's)."""
    s = settings
    _, suppressions = codecs(schemas)
    return await stack.enter_async_context(
        FeedbackProcessor(
            s.kafka,
            s.feedback,
            feedback_topic=s.kafka.topic_prefix + s.policy.feedback_topic,
            suppressions_topic=state_topics(s)[1],
            feedback=feedback_codec(schemas),
            outcomes=outcomes,
            suppressions=suppressions,
            caps=caps,
            address_key=address_key(s),
            id_domain=s.mail.id_domain,
            metrics=metrics,
        )
    )
