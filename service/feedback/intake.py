"""`herald feedback <path>...`: bounce and complaint mail from `.eml` files and maildirs,
parsed and published, one line per record and a summary."""

from __future__ import annotations

import asyncio
import mailbox
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from service.errors import FeedbackError
from service.events.schemas import SchemaStore
from service.feedback.model import Feedback, feedback_codec
from service.feedback.publisher import FeedbackPublisher
from service.feedback.reports import parse_report
from service.logs import mask_emails
from service.settings.feedback import FeedbackSettings

if TYPE_CHECKING:
    from service.settings import Settings

MAILDIR_SUBDIRS = ("cur", "new", "tmp")


def feedback_settings(settings: Settings) -> FeedbackSettings:
    """The `feedback` group once `Settings` has it; the defaults until then."""
    group = getattr(settings, "feedback", None)
    return group if isinstance(group, FeedbackSettings) else FeedbackSettings()


def run_intake(settings: Settings, paths: list[Path], out: TextIO) -> int:
    """Parse and publish every message under `paths`; 1 if any could not be read."""
    return asyncio.run(_intake(settings, paths, out))


async def _intake(settings: Settings, paths: list[Path], out: TextIO) -> int:
    group = feedback_settings(settings)
    codec = feedback_codec(SchemaStore.load(settings.schemas_dir))
    kinds: Counter[str] = Counter()
    reports = failed = 0
    async with FeedbackPublisher(
        settings.kafka, settings.policy, codec, timeout_s=group.publish_timeout_s
    ) as publisher:
        for source, raw, received in _messages(paths):
            if isinstance(raw, str):  # the reason the source could not be read
                failed += 1
                out.write(f"FAILED {source}: {raw}\n")
                continue
            try:
                items = parse_report(
                    raw,
                    verp_prefix=group.verp_prefix,
                    received_at=received,
                    max_bytes=group.max_report_bytes,
                )
            except FeedbackError as exc:
                failed += 1
                out.write(f"FAILED {source}: {exc}\n")
                continue
            await publisher.publish(items)
            reports += 1
            for item in items:
                kinds[item.kind.value] += 1
                out.write(_line(item, source))
    by_kind = ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())) or "none"
    out.write(
        f"feedback: {reports} reports read, {sum(kinds.values())} records published to "
        f"{settings.kafka.topic_prefix + settings.policy.feedback_topic} ({by_kind}); "
        f"{failed} failed\n"
    )
    return 1 if failed else 0


def _line(item: Feedback, source: str) -> str:
    recipient = mask_emails(item.recipient) if item.recipient else "(redacted)"
    return (
        f"{item.kind.value:<11} {item.provider:<8} {recipient} {item.message_id or '-'}  {source}\n"
    )


def _messages(paths: list[Path]) -> Iterator[tuple[str, bytes | str, datetime]]:
    """(source, bytes or the reason they could not be read, when received) per message: a
    file is one message, a maildir each of its messages, another directory its `*.eml`."""
    for path in paths:
        if path.is_dir() and all((path / d).is_dir() for d in MAILDIR_SUBDIRS):
            box = mailbox.Maildir(path, factory=None, create=False)
            for key in sorted(box.iterkeys()):
                try:
                    raw: bytes | str = box.get_bytes(key)
                except (OSError, KeyError) as exc:
                    raw = f"unreadable: {exc}"
                yield f"{path}:{key}", raw, datetime.now(UTC)
        elif path.is_dir():
            for file in sorted(path.glob("*.eml")):
                yield from _file(file)
        else:
            yield from _file(path)


def _file(path: Path) -> Iterator[tuple[str, bytes | str, datetime]]:
    try:
        yield str(path), path.read_bytes(), _mtime(path)
    except OSError as exc:
        yield str(path), f"unreadable: {exc.strerror or exc}", datetime.now(UTC)


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)
