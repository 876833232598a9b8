"""Latency floor of the input path alone: produce at a steady rate, and time produce → receive
for a consumer calling `consume(500, 0.1)` as Herald's loop does, against `poll(0.1)`.

    python -m bench.consume_latency [--rate 20] [--seconds 15]

Starts its own broker like the benchmark. No SMTP, no rendering: what Kafka and the consume
call cost before Herald does anything.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import cast

import confluent_kafka

from bench.procs import Broker
from bench.run import percentiles


def measure(bootstrap: str, mode: str, rate: float, seconds: float) -> dict[str, float]:
    topic = f"lat-{mode}-{uuid.uuid4().hex[:6]}"
    from service.kafka.admin import ensure_topics

    ensure_topics({"bootstrap.servers": bootstrap}, [topic], partitions=2)
    c = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    c.subscribe([topic])
    lat: list[float] = []
    total = int(rate * seconds)
    done = threading.Event()

    def produce() -> None:
        p = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        time.sleep(3)  # let the consumer join
        start = time.monotonic()
        for i in range(total):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            p.produce(topic, struct.pack("d", time.time()))
            p.poll(0)
        p.flush(10)
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    deadline = time.monotonic() + seconds + 30
    while len(lat) < total and time.monotonic() < deadline:
        batch = c.consume(500, 0.1) if mode == "consume" else [m for m in [c.poll(0.1)] if m]
        now = time.time()
        for m in batch:
            if m.error() is None:
                # Every record has a value: the send time, a double, written above.
                lat.append((now - struct.unpack("d", cast(bytes, m.value()))[0]) * 1000)
    t.join()
    c.close()
    return percentiles(lat)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.consume_latency")
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--seconds", type=float, default=15)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="herald-lat-"))
    broker = Broker(tmp / "kafka")
    broker.start()
    try:
        for mode in ("consume", "poll"):
            r = measure(broker.bootstrap, mode, args.rate, args.seconds)
            call = "consume(500, 0.1)" if mode == "consume" else "poll(0.1)"
            print(f"{call:18} at {args.rate:.0f}/s: produce -> received ms {r}")
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
