"""Writes consent choices to the preferences topic and waits for the broker to keep them.

An idempotent librdkafka producer (acks=all) with the connection settings every Herald client
uses (`KafkaSettings.librdkafka`). Its delivery reports are served by a thread of its own and
handed to the event loop with `call_soon_threadsafe`. Not `confluent_kafka.aio.AIOProducer`:
it holds records in a buffer for up to `buffer_timeout` before librdkafka sees them, which
suits throughput, while a person waiting on a one-click answer wants this one record now.
"""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import confluent_kafka
import structlog
from confluent_kafka import KafkaError

from service.errors import PreferencesUnavailable
from service.logs import KAFKA_LOGGER
from service.settings import Settings
from service.stores.consent import Preference, PreferenceCodec

log = structlog.get_logger("herald.public")
_POLL_S = 0.1


class PreferencePublisher:
    """`publish(pref)` returns once the broker has the record on every in-sync replica."""

    def __init__(
        self, settings: Settings, codec: PreferenceCodec, *, timeout_ms: int = 10_000
    ) -> None:
        """`timeout_ms`: how long librdkafka tries to deliver one record before giving up."""
        k = settings.kafka
        self.topic = k.topic_prefix + settings.policy.preferences_topic
        self._codec = codec
        self._producer = confluent_kafka.Producer(
            {
                **k.librdkafka(),
                "client.id": f"{k.client_id}-public",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 0,
                "message.timeout.ms": timeout_ms,
                "error_cb": self._on_error,
                "logger": KAFKA_LOGGER,
            }
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herald-public")
        self._open = False
        self._polling: asyncio.Future[None] | None = None

    async def __aenter__(self) -> PreferencePublisher:
        self._open = True
        self._polling = asyncio.get_running_loop().run_in_executor(self._thread, self._poll)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Deliver what is queued (within the delivery timeout), then stop the thread."""
        if not self._open:
            return
        self._open = False
        if self._polling is not None:
            await self._polling
        await asyncio.get_running_loop().run_in_executor(self._thread, self._producer.flush)
        self._thread.shutdown(wait=True)

    def _poll(self) -> None:
        """On the producer's thread: serve delivery reports until closed."""
        while self._open:
            self._producer.poll(_POLL_S)

    async def publish(self, preference: Preference) -> None:
        """Write the choice and wait for its acknowledgement; PreferencesUnavailable if the
        broker does not take it."""
        if not self._open:
            raise PreferencesUnavailable("the preference publisher is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        context = contextvars.copy_context()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            # On the producer's thread: hand the report to the loop, with the request's context.
            loop.call_soon_threadsafe(_settle, done, err, context=context)

        try:
            self._producer.produce(
                self.topic,
                self._codec.encode(preference),
                preference.key,
                on_delivery=delivered,
            )
        except (BufferError, confluent_kafka.KafkaException) as exc:
            raise PreferencesUnavailable(f"cannot queue the preference: {exc}") from exc
        await done

    def _on_error(self, err: KafkaError) -> None:
        log.warning("kafka client error", client="public", error=err.str(), code=err.name())


def _settle(done: asyncio.Future[None], err: KafkaError | None) -> None:
    if done.done():  # the request that waited was cancelled (client went away)
        return
    if err is None:
        done.set_result(None)
    else:
        done.set_exception(PreferencesUnavailable(f"the broker did not take it: {err.str()}"))
