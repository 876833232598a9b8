"""Writes Feedback records to the feedback topic, and answers only once Kafka has them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException

from service.errors import DependencyUnavailable
from service.feedback.model import Feedback
from service.logs import KAFKA_LOGGER
from service.settings import KafkaSettings, PolicySettings
from service.stores.codec import StateCodec

log = structlog.get_logger("herald.feedback")


class FeedbackPublisher:
    """Idempotent producer (acks=all) of `herald.feedback.MailFeedback` records.

    Its own bridge rather than `confluent_kafka.aio.AIOProducer`, which buffers records for up
    to its `buffer_timeout` before producing them: a bounce waits here for the broker only.
    A record not acknowledged in time stays queued in librdkafka and may still arrive after
    its sender was told to retry; the retry's copy has the same `feedback_id`.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        policy: PolicySettings,
        codec: StateCodec,
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.topic = kafka.topic_prefix + policy.feedback_topic
        self._codec = codec
        self._timeout_s = timeout_s
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herald-feedback")
        self._producer = confluent_kafka.Producer(
            {
                **kafka.librdkafka(),
                "enable.idempotence": True,
                "acks": "all",
                "logger": KAFKA_LOGGER,
            }
        )
        self.published = 0

    async def publish(self, items: Sequence[Feedback]) -> None:
        """Write `items` and wait for the broker's acknowledgement of every one, off the loop;
        DependencyUnavailable if any is refused or not acknowledged within the timeout."""
        if not items:
            return
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[None]] = []
        for item in items:
            done: asyncio.Future[None] = loop.create_future()
            waiting.append(done)
            value = self._codec.encode(item.to_record())
            try:
                self._producer.produce(
                    self.topic, value, item.key, on_delivery=self._resolver(loop, done)
                )
            except (BufferError, KafkaException) as exc:
                done.cancel()
                raise DependencyUnavailable(f"feedback not queued for Kafka: {exc}") from exc
        await loop.run_in_executor(self._thread, self._producer.flush, self._timeout_s)
        failures = [
            f.exception()
            if f.done()
            else TimeoutError(f"no acknowledgement within {self._timeout_s} s")
            for f in waiting
        ]
        if errors := [e for e in failures if e is not None]:
            raise DependencyUnavailable(
                f"{len(errors)} of {len(items)} feedback records not acknowledged by Kafka: "
                f"{errors[0]}"
            )
        self.published += len(items)

    @staticmethod
    def _resolver(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> Any:
        """The delivery callback: runs on the flushing thread, resolves `done` on the loop."""

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                loop.call_soon_threadsafe(_settle, done, None)
            else:
                loop.call_soon_threadsafe(_settle, done, KafkaException(err))

        return delivered

    async def close(self) -> None:
        """Flush what is left and stop the thread."""
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(self._thread, self._producer.flush, self._timeout_s)
        self._thread.shutdown(wait=True)
        log.info("feedback publisher stopped", published=self.published, unflushed=left)

    async def __aenter__(self) -> FeedbackPublisher:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
