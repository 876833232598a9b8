"""Serves the public app with uvicorn inside Herald's event loop, and builds it from settings.

Herald owns the process's signals: `uvicorn.Server.serve` swaps SIGINT and SIGTERM for its own
handlers while it runs (in the main thread) and re-raises them at its end, and no setting turns
that off, so `capture_signals` is replaced by a no-op here. tests/unit/test_public_server.py
pins that a running listener leaves Herald's handlers in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator, Mapping, Sequence
from contextlib import AsyncExitStack

import structlog
import uvicorn
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from service.errors import ConfigError
from service.events.schemas import SchemaStore
from service.metrics import Metrics
from service.public.app import PublicApp
from service.public.link import shape
from service.public.publisher import PreferencePublisher
from service.settings import Settings
from service.stores.codec import StateCodec
from service.stores.consent import PREFERENCE_SCHEMA, PreferenceCodec
from service.tokens import Keys

log = structlog.get_logger("herald.public")
_STARTED_POLL_S = 0.01


class _Server(uvicorn.Server):
    """uvicorn's server without signal handlers of its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class PublicServer:
    """An ASGI app on a socket of its own, served until `stop`; `port` is the bound one."""

    def __init__(self, app: ASGIApp, host: str, port: int, *, graceful_s: float = 5.0) -> None:
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            http="h11",
            ws="none",
            interface="asgi3",
            # The access log would write each link, user id and token, into the logs.
            access_log=False,
            # Herald configures logging; uvicorn's own lines go through it as they are.
            log_config=None,
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=int(graceful_s),
            h11_max_incomplete_event_size=16 * 1024,
            limit_concurrency=200,
        )
        # access_log=False only detaches the access logger's handlers; a handler attached to it
        # later (pytest's capture does) would bring back lines holding each link's token.
        logging.getLogger("uvicorn.access").disabled = True
        self._host = host
        self._port = port
        self._server = _Server(self._config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._socket is not None, "the server is not started"
        return int(self._socket.getsockname()[1])

    async def __aenter__(self) -> PublicServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind (here, so a port in use fails as OSError, not uvicorn's sys.exit), then serve."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(self._config.backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="public")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the public listener stopped while starting")
            await asyncio.sleep(_STARTED_POLL_S)
        log.info("public listener started", host=self._host, port=self.port)

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (up to the grace period), close."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._task = None
            if self._socket is not None:
                self._socket.close()
            log.info("public listener stopped")


async def start_public(
    settings: Settings,
    keys: Keys | None,
    store: SchemaStore,
    metrics: Metrics,
    categories: Mapping[str, str],
    stack: AsyncExitStack,
    *,
    publish_timeout_ms: int = 10_000,
    routes: Sequence[BaseRoute] = (),
) -> PublicServer | None:
    """The public listener, started, and its publisher; both close with `stack`. None when
    `public.enabled` is false. `publish_timeout_ms`: how long a choice may take to reach the
    broker before the answer is 503."""
    if not settings.public.enabled:
        return None
    if keys is None:
        raise ConfigError(
            "settings",
            "links.unsubscribe_secret",
            "the public listener verifies unsubscribe tokens and has no key",
            "set HERALD_LINKS__UNSUBSCRIBE_SECRET, or HERALD_PUBLIC__ENABLED=false",
        )
    link = shape(settings.links.unsubscribe_url)
    codec = PreferenceCodec(StateCodec(store, PREFERENCE_SCHEMA))
    publisher = await stack.enter_async_context(
        PreferencePublisher(settings, codec, timeout_ms=publish_timeout_ms)
    )
    app = PublicApp(
        link=link,
        keys=keys,
        categories=categories,
        publish=publisher.publish,
        metrics=metrics,
        routes=routes,
    )
    public = settings.public
    return await stack.enter_async_context(PublicServer(app.asgi(), public.host, public.port))
