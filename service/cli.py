"""`herald` command line: run the service, check its configuration, and local tooling."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import structlog

from service import logs
from service.errors import ConfigError, HeraldError
from service.settings import Settings, config_warnings, load_settings

log = structlog.get_logger("herald.cli")


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _run(settings: Settings) -> None:
    from service.app import Herald
    from service.render.renderer import freeze_heap

    herald = Herald(settings)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    running = asyncio.create_task(herald.run(stop))
    started = asyncio.create_task(herald.started.wait())
    await asyncio.wait([running, started], return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if not running.done():
        freeze_heap()
    await running


def cmd_run(settings: Settings, _: argparse.Namespace) -> int:
    for warning in config_warnings(settings):
        log.warning("configuration weakens security", warning=warning)
    asyncio.run(_run(settings))
    return 0


def cmd_check_config(settings: Settings, _: argparse.Namespace) -> int:
    from service.app import load

    loaded = load(settings)
    for warning in config_warnings(settings):
        sys.stderr.write(f"herald check-config: warning: {warning}\n")
    routes = sum(len(r) for r in loaded.table.routes.values())
    sys.stdout.write(
        f"configuration OK: {len(loaded.bindings)} topics, {routes} routes, "
        f"{len(loaded.store.names())} schemas, templates in {loaded.renderer.locales}\n"
    )
    return 0


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    """Configuration, then every route's templates in every locale against its event schema."""
    from service.app import load
    from service.tools.checks import check, css_fallbacks
    from service.tools.link_fields import link_fields

    loaded = load(settings)
    for warning in [*config_warnings(settings), *css_fallbacks(loaded)]:
        sys.stderr.write(f"herald check: warning: {warning}\n")
    problems = check(loaded)
    for problem in problems:
        sys.stderr.write(f"herald check: {problem}\n")
    if problems:
        sys.stderr.write(f"herald check: {len(problems)} problem(s)\n")
        return 1
    routes = sum(len(r) for r in loaded.table.routes.values())
    sys.stdout.write(
        f"check OK: {routes} routes x {len(loaded.renderer.locales)} locales; every template "
        "reads only fields its event schema has\n"
    )
    if args.links:
        for template, paths in link_fields(loaded).items():
            sys.stdout.write(f"links of {template}: {', '.join(paths)}\n")
    return 0


def cmd_preview(settings: Settings, args: argparse.Namespace) -> int:
    from service.app import load
    from service.tools.preview import render_all, write_gallery

    pages = render_all(load(settings), args.examples)
    index = write_gallery(pages, args.out)
    sys.stdout.write(f"{len(pages)} renderings; open {index.resolve().as_uri()}\n")
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from service.app import load
    from service.kafka.admin import ensure_state_topics, ensure_topics
    from service.outcomes.retries import RetryPolicy

    loaded = load(settings)
    k = settings.kafka
    topics = [
        *sorted(loaded.bindings),
        k.topic_prefix + k.results_topic,
        k.topic_prefix + k.dead_letter_topic,
        *RetryPolicy(settings.retry, k.topic_prefix).topics,
        k.topic_prefix + settings.policy.feedback_topic,
    ]
    created = ensure_topics(
        k.librdkafka(), topics, partitions=args.partitions or k.own_topic_partitions
    )
    created += ensure_state_topics(settings)
    sys.stdout.write(f"topics created: {created or 'none (all exist)'}\n")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Publish every example event with a fresh event id, then show the outcomes that come back."""
    from service.tools.demo import publish_examples, show_outcomes

    sent = publish_examples(settings, args.examples, sys.stdout)
    if args.wait_s <= 0:
        return 0
    return show_outcomes(settings, sent, args.wait_s, sys.stdout)


def cmd_redrive(settings: Settings, args: argparse.Namespace) -> int:
    """Re-publish dead letters to their source topics, if Herald consumes them."""
    from service.app import load
    from service.outcomes.redrive import Selection, redrive

    selection = Selection(
        reasons=frozenset(args.reason or ()),
        since=_when(args.since),
        until=_when(args.until),
    )
    allowed = frozenset(load(settings).bindings)
    report = redrive(
        settings, selection, allowed, dry_run=args.dry_run, from_beginning=args.from_beginning
    )
    verb = "would redrive" if args.dry_run else "redriven"
    by_reason = ", ".join(f"{r}={n}" for r, n in sorted(report.redriven.items())) or "none"
    sys.stdout.write(
        f"{verb}: {sum(report.redriven.values())} ({by_reason}); not selected: {report.skipped}; "
        f"without a source topic: {report.unroutable}; refused (a topic Herald does not "
        f"consume): {report.refused}\n"
    )
    return 0


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_feedback(settings: Settings, args: argparse.Namespace) -> int:
    from service.feedback.intake import run_intake

    return run_intake(settings, args.paths, sys.stdout)


def cmd_outbox(_: Settings, args: argparse.Namespace) -> int:
    from service.tools.outbox import serve

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await serve(args.directory, args.host, args.port, stop)

    asyncio.run(main())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="herald", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="consume events and send mail until SIGTERM").set_defaults(
        fn=cmd_run
    )
    sub.add_parser(
        "check-config",
        help="validate settings, schemas, routing table and "
        "templates without connecting to anything",
    ).set_defaults(fn=cmd_check_config)
    ck = sub.add_parser(
        "check",
        help="check-config, plus every template in every locale against its event schema",
    )
    ck.add_argument(
        "--links",
        action="store_true",
        help="also list, per template, the fields its links are made of (they must be https)",
    )
    ck.set_defaults(fn=cmd_check)
    pv = sub.add_parser(
        "preview",
        help="render every notification x locale into a static gallery (var/preview/index.html)",
    )
    pv.add_argument("--examples", type=Path, default=Path("schemas/examples"))
    pv.add_argument("--out", type=Path, default=Path("var/preview"))
    pv.set_defaults(fn=cmd_preview)
    t = sub.add_parser(
        "topics", help="create the input, results, dead-letter and retry topics that are missing"
    )
    t.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partitions of the topics created (default: kafka.own_topic_partitions)",
    )
    t.set_defaults(fn=cmd_topics)
    d = sub.add_parser("demo", help="publish the example events and print their outcomes")
    d.add_argument("--examples", type=Path, default=Path("schemas/examples"))
    d.add_argument(
        "--wait-s",
        type=float,
        default=30.0,
        help="how long to wait for the outcomes (0: do not wait)",
    )
    d.set_defaults(fn=cmd_demo)
    r = sub.add_parser("redrive", help="re-publish dead-lettered records to their source topic")
    r.add_argument(
        "--reason", action="append", help="only this reason (repeatable), e.g. render_error"
    )
    r.add_argument("--since", help="only dead letters from this time on (ISO 8601)")
    r.add_argument("--until", help="only dead letters before this time (ISO 8601)")
    r.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    r.add_argument(
        "--from-beginning",
        action="store_true",
        help="consider every dead letter, not only those after the last redrive",
    )
    r.set_defaults(fn=cmd_redrive)
    f = sub.add_parser(
        "feedback", help="publish bounces and complaints from .eml files and maildirs"
    )
    f.add_argument("paths", nargs="+", type=Path, help=".eml files, maildirs, or folders of .eml")
    f.set_defaults(fn=cmd_feedback)
    o = sub.add_parser("outbox", help="local SMTP server that saves each message as .eml")
    o.add_argument("--directory", type=Path, default=Path("var/outbox"))
    o.add_argument("--host", default="127.0.0.1")
    o.add_argument("--port", type=int, default=2525)
    o.set_defaults(fn=cmd_outbox)
    from service.tools.state_admin import add_commands

    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        logs.configure(settings.log.level, settings.log.format)
        return int(args.fn(settings, args))
    except ConfigError as exc:
        sys.stderr.write(f"herald: configuration error: {exc}\n")
        return 2
    except HeraldError as exc:
        sys.stderr.write(f"herald: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
