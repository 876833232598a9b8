"""The confluent-kafka adapter: blocking librdkafka calls bridged onto asyncio, once.

Delivery callbacks run on a poller thread and resolve futures with `call_soon_threadsafe`;
consumer calls run on one dedicated thread so librdkafka sees them serialised, and the rebalance
callbacks they trigger can wait for the event loop without blocking it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException

from service.errors import PublishError
from service.logs import KAFKA_LOGGER


class AsyncProducer:
    """An idempotent producer whose `produce` can be awaited until the broker acknowledges."""

    def __init__(self, conf: dict[str, Any]) -> None:
        base = {"enable.idempotence": True, "acks": "all", "linger.ms": 5, "logger": KAFKA_LOGGER}
        self._producer = confluent_kafka.Producer({**base, **conf})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="herald-producer", daemon=True)

    async def __aenter__(self) -> AsyncProducer:
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, 30)
        self._stop.set()
        self._thread.join(timeout=5)
        # Without close() the client lives until garbage-collected, reconnecting in the background.
        self._producer.close()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send one record; returns when it is durably written, else raises PublishError."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            loop.call_soon_threadsafe(_resolve, done, err)

        while True:
            try:
                self._producer.produce(
                    topic, value, key, headers=list(headers or ()), on_delivery=on_delivery
                )
                break
            except BufferError:
                await asyncio.sleep(0.05)  # local queue full: let the poller drain it
            except KafkaException as exc:
                raise PublishError(f"produce to {topic} refused: {exc}") from exc
        await done


def _resolve(fut: asyncio.Future[None], err: KafkaError | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(PublishError(f"not acknowledged: {err.str()}"))
