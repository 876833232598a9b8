"""The reference workloads, each run as its own process by the benchmark (`python -m
bench.workers <name> ...`), printing one JSON line of results on stdout.

- `raw-blast`: pipelined raw SMTP at the sink, no client library: what the sink can take.
- `blast`: the ceiling of the send path: messages pre-rendered once with Herald's own renderer
  and composer, then sent through Herald's own SMTP pool (`service.delivery.pool.Mailer`, `pool`
  connections, pipelined where the sink offers it), as fast as it takes them. Before sending,
  the same messages are DKIM-signed with fresh RSA-2048, RSA-4096 and Ed25519 keys
  (`service.delivery.dkim`), so signing's CPU per mail is measured beside render+compose's, in
  the same process. Until
  2026-11-22 21:47 this was plain aiosmtplib (MAIL, RCPT, DATA, three round trips), which
  Herald's send path has outgrown.
- `decode`: the ceiling of the input path: a confluent-kafka consumer reading the records and
  decoding each with `service.events.EventDecoder`, nothing else.
- `naive`: the same stack used plainly: poll one record, decode, render with a plain Jinja2
  Environment, inline CSS with `css_inline.inline()` per message, build a stdlib EmailMessage,
  `send_message` over ONE aiosmtplib connection, one message after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _loaded(routing: Path) -> Any:
    from bench.procs import load_herald

    return load_herald(routing)


def _emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# --- raw-blast --------------------------------------------------------------------------------


async def _raw_conn(
    port: int, body: bytes, deadline: float, window: int, counter: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(b"EHLO blaster\r\n")
    while not (await reader.readline()).startswith(b"250 "):
        pass
    n = 0
    while time.monotonic() < deadline:
        chunk = []
        for _ in range(window):
            n += 1
            chunk.append(
                b"MAIL FROM:<b@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n"
                b"Message-ID: <raw-%d-%d@bench>\r\n" % (id(writer), n) + body + b"\r\n.\r\n"
            )
        writer.write(b"".join(chunk))
        for _ in range(4 * window):
            await reader.readline()
        counter[0] += window
    writer.write(b"QUIT\r\n")
    await reader.readline()
    writer.close()


def raw_blast(args: argparse.Namespace) -> None:
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: load\r\nFrom: b@example.com\r\n\r\n" + line * (args.size // len(line))
    counter = [0]

    async def main() -> float:
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        await asyncio.gather(
            *(_raw_conn(args.port, body, deadline, args.window, counter) for _ in range(args.conns))
        )
        return time.monotonic() - t0

    seconds = asyncio.run(main())
    _emit({"sent": counter[0], "seconds": seconds, "bytes_per_message": len(body)})


# --- blast ------------------------------------------------------------------------------------


def _prerender(loaded: Any, types: list[str], k: int) -> tuple[list[Any], float]:
    """`k` distinct messages over the mixed types, with Herald's renderer and composer; returns
    them and the mean render+compose seconds per message."""
    from bench.events import EventFactory
    from service.events.decoder import EventDecoder
    from service.flow.messages import build
    from service.outcomes.records import now
    from service.routing import route
    from service.settings import MailSettings

    factory = EventFactory(loaded, "", types, "example.com")
    decoder = EventDecoder(loaded.bindings, loaded.store)
    mail = MailSettings()
    raws = []
    for _ in range(k):
        topic, _, value = factory.make()
        raws.append((topic, value))

    async def decode_all() -> list[Any]:
        return [await decoder.decode(topic, value) for topic, value in raws]

    events = asyncio.run(decode_all())
    messages = []
    t0 = time.perf_counter()
    for event in events:
        for n in route(event, loaded.table):
            messages.append(build(loaded.renderer, mail, n, now()).email)
    return messages, (time.perf_counter() - t0) / max(1, len(messages))


def _dkim_sign_s(messages: list[Any], key: bytes, k: int = 200) -> float:
    """Mean seconds to DKIM-sign one message with `key` (PEM), as `service.flow.messages.build`
    does after compose; over the first `k` messages, unsigned ones are what the pool sends."""
    from pydantic import SecretStr

    from service.delivery.dkim import signer
    from service.settings import DkimSettings, MailSettings

    dkim = DkimSettings(domain="example.com", selector="bench", private_key=SecretStr(key.decode()))
    made = signer(dkim, MailSettings())
    assert made is not None
    sample = messages[:k]
    t0 = time.perf_counter()
    for m in sample:
        made.sign(m.data)
    return (time.perf_counter() - t0) / max(1, len(sample))


def _dkim_ms(messages: list[Any]) -> dict[str, float]:
    """DKIM signing's ms per message by key: RSA-2048 (the recommended key), RSA-4096, Ed25519."""
    from service.testing import dkim_ed25519_key, dkim_key

    return {
        "dkim_sign_ms": _dkim_sign_s(messages, dkim_key(2048)) * 1000,
        "dkim_rsa4096_ms": _dkim_sign_s(messages, dkim_key(4096)) * 1000,
        "dkim_ed25519_ms": _dkim_sign_s(messages, dkim_ed25519_key()) * 1000,
    }


def blast(args: argparse.Namespace) -> None:
    """Herald's own SMTP pool (service.delivery.pool.Mailer: pooled, pipelined where the server
    offers it, bodies written as composed), fed pre-rendered mail as fast as it takes it."""
    from service.delivery.pool import Mailer
    from service.metrics import Metrics
    from service.settings import SmtpSettings

    loaded = _loaded(args.routing)
    messages, render_s = _prerender(loaded, args.types.split(","), min(args.n, args.unique))
    dkim = _dkim_ms(messages)
    source = itertools.islice(itertools.cycle(messages), args.n)

    sent = [0]
    deadline = [0.0]
    cpu = [0.0]

    async def worker(mailer: Mailer) -> None:
        for m in source:  # shared iterator: each worker takes the next message
            if time.monotonic() > deadline[0]:
                return
            sent[0] += 1
            await mailer.send(m)

    async def main() -> float:
        settings = SmtpSettings(
            host="127.0.0.1",
            port=args.port,
            tls="none",
            pool_size=args.pool,
            local_hostname="bench",
            timeout_s=30,
        )
        async with Mailer(settings, Metrics()) as mailer:
            await asyncio.gather(*(mailer.send(m) for m in messages[: args.pool]))  # connect
            t0 = time.monotonic()
            cpu[0] = time.process_time()
            deadline[0] = t0 + args.seconds
            await asyncio.gather(*(worker(mailer) for _ in range(2 * args.pool)))
            seconds = time.monotonic() - t0
            cpu[0] = time.process_time() - cpu[0]
        return seconds

    seconds = asyncio.run(main())
    _emit(
        {
            "sent": sent[0],
            "seconds": seconds,
            "send_cpu_s": cpu[0],
            "unique_messages": len(messages),
            "render_compose_ms": render_s * 1000,
            **dkim,
            "mean_bytes": sum(len(m.data) for m in messages) / len(messages),
        }
    )


# --- decode -----------------------------------------------------------------------------------


def _consumer(bootstrap: str, group: str, **extra: Any) -> Any:
    import confluent_kafka

    return confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **extra,
        }
    )


def decode(args: argparse.Namespace) -> None:
    from service.events.decoder import EventDecoder

    loaded = _loaded(args.routing)
    prefix = args.prefix
    bindings = {prefix + t: b for t, b in loaded.bindings.items()}
    decoder = EventDecoder(
        {
            t: type(b)(topic=t, event_type=b.event_type, reader=b.reader, encoding=b.encoding)
            for t, b in bindings.items()
        },
        loaded.store,
    )
    c = _consumer(args.bootstrap, f"bench-decode-{uuid.uuid4().hex[:6]}")
    c.subscribe(args.topics.split(","))

    async def main() -> tuple[int, float, float]:
        n = 0
        first = last = 0.0
        deadline = time.monotonic() + args.seconds + 30
        while n < args.n and time.monotonic() < deadline:
            for m in c.consume(500, 0.1):
                if m.error():
                    continue
                if not first:
                    first = time.monotonic()
                    deadline = first + args.seconds
                await decoder.decode(m.topic(), m.value())
                n += 1
            last = time.monotonic()
        return n, first, last

    n, first, last = asyncio.run(main())
    c.close()
    _emit({"decoded": n, "seconds": last - first})


# --- naive ------------------------------------------------------------------------------------


def naive(args: argparse.Namespace) -> None:
    import aiosmtplib
    import css_inline
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    from service.events.decoder import EventDecoder
    from service.render import formats, renderer
    from service.routing import route

    loaded = _loaded(args.routing)
    prefix = args.prefix
    decoder = EventDecoder(
        {
            prefix + t: type(b)(
                topic=prefix + t, event_type=b.event_type, reader=b.reader, encoding=b.encoding
            )
            for t, b in loaded.bindings.items()
        },
        loaded.store,
    )
    env = Environment(
        loader=FileSystemLoader(ROOT / "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        formats.FILTERS,
    )

    brand = loaded.renderer._brand
    c = _consumer(
        args.bootstrap, f"bench-naive-{uuid.uuid4().hex[:6]}", **{"enable.auto.commit": True}
    )
    c.subscribe(args.topics.split(","))

    def render(n: Any) -> EmailMessage:
        r = n.recipient
        lang = r.locale.split("-")[0].lower()
        loc = lang if (ROOT / "templates" / lang / n.template).is_dir() else "en"
        ctx = {**renderer.template_context(n, brand), "unsubscribe_url": None}
        with formats.audience(r.locale, loc, r.time_zone):
            subject = env.get_template(f"{loc}/{n.template}/subject.txt").render(ctx).strip()
            html = css_inline.inline(env.get_template(f"{loc}/{n.template}/body.html").render(ctx))
            text = env.get_template(f"{loc}/{n.template}/body.txt").render(ctx)
        msg = EmailMessage()
        msg["From"] = "Herald <no-reply@example.com>"
        msg["To"] = r.email
        msg["Subject"] = subject
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = make_msgid(domain="example.com")
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg

    async def main() -> tuple[int, float]:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=args.port,
            use_tls=False,
            start_tls=False,
            local_hostname="bench",
            timeout=30,
        )
        await smtp.connect()
        n = 0
        first = 0.0
        deadline = time.monotonic() + args.seconds + 30
        while n < args.n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            if not first:
                first = time.monotonic()
                deadline = first + args.seconds
            event = await decoder.decode(m.topic(), m.value())
            for notification in route(event, loaded.table):
                await smtp.send_message(render(notification))
                n += 1
        await smtp.quit()
        return n, time.monotonic() - first

    n, seconds = asyncio.run(main())
    c.close()
    _emit({"sent": n, "seconds": seconds})


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.workers")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("raw-blast")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--seconds", type=float, default=5)
    r.add_argument("--conns", type=int, default=8)
    r.add_argument("--window", type=int, default=8)
    r.add_argument("--size", type=int, default=20_000)
    r.set_defaults(fn=raw_blast)
    b = sub.add_parser("blast")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--routing", type=Path, required=True)
    b.add_argument("--types", required=True)
    b.add_argument("--n", type=int, required=True)
    b.add_argument("--unique", type=int, default=600)
    b.add_argument("--pool", type=int, default=8)
    b.add_argument("--seconds", type=float, default=10, help="stop sending after this long")
    b.set_defaults(fn=blast)
    for name, fn in (("decode", decode), ("naive", naive)):
        d = sub.add_parser(name)
        d.add_argument("--bootstrap", required=True)
        d.add_argument("--routing", type=Path, required=True)
        d.add_argument("--prefix", required=True)
        d.add_argument("--topics", required=True)
        d.add_argument("--n", type=int, required=True)
        d.add_argument("--seconds", type=float, default=20, help="stop after this long")
        d.add_argument("--port", type=int, default=0)
        d.set_defaults(fn=fn)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
