"""Render workers: the same bytes as rendering on the loop, the same errors, and no mail lost
when a worker dies. Real child processes over a real socket pair."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from service.app import Loaded
from service.errors import ConfigError, InvalidLink, InvalidRecipientError, RenderTimeout
from service.flow.messages import LocalMessages, Recipe, pack, unpack
from service.flow.workers import WorkerMessages
from service.outcomes.records import now
from service.routing import Notification, route
from tests.conftest import ROOT, event_from_example, project_settings


def _notifications(loaded: Loaded) -> list[Notification]:
    out = []
    for event_type in loaded.table.routes:
        for locale in ("en", "fr"):
            event = event_from_example(loaded, event_type, locale=locale)
            out += [n for n in route(event, loaded.table) if n.condition_met]
    return out


def _recipe(templates: Path = ROOT / "templates") -> Recipe:
    s = project_settings()
    return Recipe(templates, s.brand, s.mail.default_locale, s.links, s.mail)


def _workers(loaded: Loaded, count: int = 1, recipe: Recipe | None = None) -> WorkerMessages:
    local = LocalMessages(loaded.renderer, project_settings().mail)
    return WorkerMessages(recipe or _recipe(), count, local, "json")


def _with_subject(n: Notification, **payload: Any) -> Notification:
    event = replace(n.event, payload={**n.event.payload, **payload})
    return replace(n, event=event)


def test_a_notification_crosses_to_a_worker_whole(loaded: Loaded) -> None:
    """What a worker rebuilds equals the notification it was sent."""
    for n in _notifications(loaded):
        assert n == unpack(pack(n))


async def test_workers_build_the_same_bytes_as_the_event_loop(loaded: Loaded) -> None:
    """Every route in both locales, built by two workers at once, byte for byte."""
    notifications = _notifications(loaded)
    local = LocalMessages(loaded.renderer, project_settings().mail)
    at = now()
    async with _workers(loaded, count=2) as workers:
        built = await asyncio.gather(*(workers.build(n, at) for n in notifications))
    assert len(built) == len(notifications) > 30
    assert built == [await local.build(n, at) for n in notifications]


async def test_errors_come_back_with_their_kind(loaded: Loaded) -> None:
    """A forbidden link or a bad address found in a worker is raised here as itself, so the
    notification fails exactly as without workers; the worker carries on."""
    order = next(n for n in _notifications(loaded) if n.template == "order_receipt")
    activation = next(n for n in _notifications(loaded) if n.template == "account_activation")
    hostile = _with_subject(activation, activation_url="javascript:alert(document.cookie)")
    bad_address = replace(order, recipient=replace(order.recipient, email="not an address"))
    async with _workers(loaded) as workers:
        with pytest.raises(InvalidLink):
            await workers.build(hostile)
        with pytest.raises(InvalidRecipientError):
            await workers.build(bad_address)
        assert (await workers.build(order)).locale == order.recipient.locale


async def test_mail_pending_in_a_killed_worker_is_built_by_its_successor(loaded: Loaded) -> None:
    """SIGKILL a worker with requests in flight: a new one starts and builds them all, and
    mail asked for while it starts is built too."""
    notifications = _notifications(loaded) * 3
    async with _workers(loaded) as workers:
        first = workers._workers[0].process.pid
        pending = [asyncio.ensure_future(workers.build(n)) for n in notifications]
        await asyncio.sleep(0)  # the requests are written
        os.kill(first, signal.SIGKILL)
        await asyncio.sleep(0.2)  # dead, and its successor still starting
        meanwhile = [workers.build(n) for n in notifications[:5]]
        built = await asyncio.wait_for(asyncio.gather(*pending, *meanwhile), timeout=60)
        assert len(built) == len(notifications) + 5
        assert workers._workers[0].process.pid != first


async def test_with_no_worker_left_mail_is_built_on_the_loop(
    loaded: Loaded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a dead worker cannot be started again, nothing is refused: the loop builds the mail.
    (A fake here: a start that fails on demand, which a real machine will not do.)"""
    notifications = _notifications(loaded)[:10]
    async with _workers(loaded) as workers:

        async def refuse(index: int) -> Any:
            raise OSError("fork refused")

        monkeypatch.setattr(workers, "_start", refuse)
        pending = [asyncio.ensure_future(workers.build(n)) for n in notifications]
        await asyncio.sleep(0)
        os.kill(workers._workers[0].process.pid, signal.SIGKILL)
        built = await asyncio.gather(*pending)
        assert workers._workers == []
        assert len(built) == len(notifications)
        assert (await workers.build(notifications[0])).locale == notifications[0].recipient.locale


async def test_a_worker_that_cannot_load_the_templates_stops_start_up(
    loaded: Loaded, tmp_path: Path
) -> None:
    """The worker's ConfigError reaches the parent with the file and line."""
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    broken = tmp_path / "templates" / "en" / "order_receipt" / "subject.txt"
    broken.write_text("{% if %}")
    with pytest.raises(ConfigError, match=r"order_receipt/subject\.txt"):
        async with _workers(loaded, recipe=_recipe(tmp_path / "templates")):
            pass


async def test_a_worker_stuck_on_a_mail_is_stopped_and_the_mail_fails(
    loaded: Loaded, tmp_path: Path
) -> None:
    """A template that never finishes (nested loops of 10^10 steps, within the sandbox's
    limits): after `timeout_s` the mail fails with `render_timeout`, the worker is replaced,
    and the next mail is built."""
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    slow = templates / "en" / "report_ready" / "body.txt"
    slow.write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    )
    report = next(n for n in _notifications(loaded) if n.template == "report_ready")
    order = next(n for n in _notifications(loaded) if n.template == "order_receipt")
    local = LocalMessages(loaded.renderer, project_settings().mail)
    async with WorkerMessages(_recipe(templates), 1, local, "json", timeout_s=1.0) as workers:
        first = workers._workers[0].process.pid
        if report.recipient.locale.startswith("fr"):
            report = replace(report, recipient=replace(report.recipient, locale="en"))
        with pytest.raises(RenderTimeout) as info:
            await workers.build(report)
        assert "render_timeout" == info.value.reason
        assert (
            await workers.build(order)
        ).locale == order.recipient.locale  # here, or on a new one
        for _ in range(200):
            if workers._workers:
                break
            await asyncio.sleep(0.05)
        assert first != workers._workers[0].process.pid
        assert (await workers.build(order)).locale == order.recipient.locale
