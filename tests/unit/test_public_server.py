"""The public listener's server: on a free port, leaves Herald's signal handlers alone, stops.

The signal test is the contract on uvicorn behind `service/public/server.py`: `Server.serve`
installs SIGINT and SIGTERM handlers of its own in the main thread, and only the overridden
`capture_signals` keeps it from doing so. Should uvicorn move that elsewhere, it fails.
"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
import uvicorn

from service import tokens
from service.metrics import Metrics
from service.public.app import SECURITY_HEADERS, PublicApp
from service.public.link import shape
from service.public.server import PublicServer
from service.settings import LinkSettings
from service.stores.consent import Preference

KEYS = tokens.Keys(current="k1", secrets={"k1": b"unit-test-key"})


async def _never(preference: Preference) -> None:
    raise AssertionError("nothing may be published in these tests")


def _app(metrics: Metrics) -> PublicApp:
    return PublicApp(
        link=shape(LinkSettings().unsubscribe_url),
        keys=KEYS,
        categories={"activity.mention": "activity"},
        publish=_never,
        metrics=metrics,
    )


async def test_the_listener_binds_port_0_answers_and_stops() -> None:
    """Port 0 gets a free port, reported after start; /healthz and a 404 both carry the
    security headers; after stop, nothing listens there."""
    metrics = Metrics()
    async with PublicServer(_app(metrics).asgi(), "127.0.0.1", 0) as server:
        assert server.port > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            health = await client.get("/healthz")
            missing = await client.get("/metrics")
            wrong = await client.put("/unsubscribe")
        port = server.port
    assert (200, "ok\n") == (health.status_code, health.text)
    assert 404 == missing.status_code
    assert 405 == wrong.status_code
    for response in (health, missing, wrong):
        assert SECURITY_HEADERS == {k: response.headers[k] for k in SECURITY_HEADERS}
        assert "server" not in response.headers
    assert 1.0 == metrics.public_requests.labels("healthz", "ok")._value.get()
    assert 1.0 == metrics.public_requests.labels("other", "not_found")._value.get()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/healthz")


async def test_a_port_in_use_fails_at_start_as_an_os_error() -> None:
    """Not uvicorn's sys.exit, which would end Herald's event loop."""
    async with PublicServer(_app(Metrics()).asgi(), "127.0.0.1", 0) as first:
        second = PublicServer(_app(Metrics()).asgi(), "127.0.0.1", first.port)
        with pytest.raises(OSError, match="in use"):
            await second.start()


async def test_the_running_listener_leaves_heralds_signal_handlers_alone() -> None:
    """Herald stops on SIGTERM through the loop's handler, as `herald run` installs it; with
    the listener serving, the handler is the same and a SIGTERM reaches Herald's stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        before = signal.getsignal(signal.SIGTERM)
        async with PublicServer(_app(Metrics()).asgi(), "127.0.0.1", 0):
            assert before == signal.getsignal(signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            await stop.wait()
        assert before == signal.getsignal(signal.SIGTERM)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def test_plain_uvicorn_would_take_the_signals_over() -> None:
    """Why the override exists: uvicorn's own `serve` replaces the handler while it runs."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: None)
    try:
        before = signal.getsignal(signal.SIGTERM)
        server = uvicorn.Server(
            uvicorn.Config(_app(Metrics()).asgi(), port=0, lifespan="off", log_config=None)
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            assert not task.done(), "uvicorn stopped while starting"
            await asyncio.sleep(0.01)
        during = signal.getsignal(signal.SIGTERM)
        server.should_exit = True
        await task
        assert before != during
        assert server.handle_exit == during
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
