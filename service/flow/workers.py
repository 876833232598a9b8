"""Render workers: mail rendered and composed in child processes beside the event loop.

Rendering and composing are pure and CPU-bound, all under one GIL. With
`processing.render_workers` > 0 they run in worker processes on the machine's other cores,
while the loop keeps Kafka, the idempotency store and SMTP. The pool sits in the flow, above
render and delivery, because a worker does both.

Each worker is a child process joined by a socket pair. Requests and replies are
length-prefixed pickles, answered in order; the loop reads replies with asyncio itself, with no
executor threads to contend for its GIL. A worker that dies is started again and its requests
are sent again; a request that a worker dies on twice is refused as a render error, and one it
takes longer than the timeout for fails as `render_timeout`, the worker replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import struct
import sys
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

import structlog

from service.delivery.mime import Email
from service.errors import ConfigError, HeraldError, RenderError, RenderTimeout
from service.flow.messages import LocalMessages, Message, Recipe, build, pack, unpack
from service.logs import configure
from service.outcomes.records import now
from service.render.renderer import freeze_heap
from service.routing import Notification

log = structlog.get_logger("herald.messages")

_LEN = struct.Struct("!I")


def _subclasses(cls: type[HeraldError]) -> list[type[HeraldError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


_ERRORS: dict[str, type[HeraldError]] = {
    c.__name__: c for c in _subclasses(HeraldError) if c is not ConfigError
}
"""Errors a worker reports back by name, raised here as themselves; any other exception in a
worker comes back as a RenderError."""


@dataclass(slots=True)
class _Request:
    n: Notification
    at: datetime
    future: asyncio.Future[Message]
    frame: bytes
    deaths: int = 0


@dataclass(slots=True)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: deque[_Request] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class WorkerMessages:
    """Render and compose in `count` worker processes, least busy first.

    If a dead worker cannot be started again, the rest carry on; with none left, mail is built
    on the event loop (`fallback`): slower, but nothing is refused for want of a process.
    """

    def __init__(
        self,
        recipe: Recipe,
        count: int,
        fallback: LocalMessages,
        log_format: str,
        timeout_s: float = 10.0,
    ) -> None:
        """`timeout_s`: how long a worker may take for one mail before it is stopped."""
        self._timeout_s = timeout_s
        self._recipe = recipe
        self._count = count
        self._fallback = fallback
        self._log_format = log_format
        self._workers: list[_Worker] = []
        self._closing = False

    async def __aenter__(self) -> WorkerMessages:
        try:
            self._workers = list(
                await asyncio.gather(*(self._start(i) for i in range(self._count)))
            )
        except BaseException:
            await self.close()
            raise
        log.info("render workers started", workers=[w.process.pid for w in self._workers])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self, index: int) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service.flow.workers",
                str(theirs.fileno()),
                self._log_format,
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        worker = _Worker(index, process, reader, writer)
        writer.write(_frame(self._recipe))
        ready = await _read(reader)
        if ready is None or ready[0] != "ready":
            writer.close()
            await process.wait()
            if ready is not None and ready[0] == "config":
                raise ConfigError(*ready[1])
            raise RenderError(f"render worker {index} exited while starting")
        worker.task = asyncio.create_task(self._replies(worker))
        return worker

    async def build(self, n: Notification, at: datetime | None = None) -> Message:
        if not self._workers:
            return await self._fallback.build(n, at)
        at = at or now()
        loop = asyncio.get_running_loop()
        request = _Request(n, at, loop.create_future(), _frame((pack(n), at)))
        self._send(self._least_busy(), request)
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), self._timeout_s)
        except TimeoutError:
            self._give_up(request)
            raise RenderTimeout(
                f"a render worker took over {self._timeout_s:g} s "
                "(processing.render_timeout_s); it was stopped"
            ) from None

    def _give_up(self, request: _Request) -> None:
        """Fail a request a worker is stuck on, and stop that worker: a new one takes its
        other requests (`_restart`)."""
        if not request.future.done():
            request.future.cancel()
        for worker in list(self._workers):
            if request in worker.pending:
                log.error("render worker stuck; stopping it", pid=worker.process.pid)
                self._workers.remove(worker)  # no more mail for it; `_restart` replaces it
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()

    def _least_busy(self) -> _Worker:
        return min(self._workers, key=lambda w: len(w.pending))

    def _send(self, worker: _Worker, request: _Request) -> None:
        worker.pending.append(request)
        worker.writer.write(request.frame)

    async def _replies(self, worker: _Worker) -> None:
        while True:
            try:
                reply = await _read(worker.reader)
            except (ConnectionError, OSError):
                reply = None
            except Exception as exc:  # a reply that does not unpickle: a bug; start afresh
                log.error("render worker reply unreadable", error=repr(exc))
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                reply = None
            if reply is None:
                break
            request = worker.pending.popleft()
            if request.future.done():
                continue  # its record was cancelled meanwhile
            if reply[0] == "ok":
                mid, sender, to, data, locale = reply[1]
                email = Email(message_id=mid, envelope_from=sender, envelope_to=to, data=data)
                request.future.set_result(Message(email, locale))
            else:
                kind, text = reply[1], reply[2]
                request.future.set_exception(_ERRORS.get(kind, RenderError)(text))
        if not self._closing:
            await self._restart(worker)

    async def _restart(self, dead: _Worker) -> None:
        # Out of the rotation first (if a timeout has not taken it out already): mail asked
        # for meanwhile goes to the others, or is built here, never to a worker that will not
        # answer.
        if dead in self._workers:
            self._workers.remove(dead)
        orphans = list(dead.pending)
        dead.pending.clear()
        code = await dead.process.wait()
        dead.writer.close()
        log.error("render worker died; starting another", pid=dead.process.pid, exit_code=code)
        try:
            worker: _Worker | None = await self._start(dead.index)
        except Exception as exc:
            worker = None
            log.error("render worker could not be started again", error=str(exc))
        if worker is not None and self._closing:  # stopped meanwhile: this one goes too
            worker.writer.close()
            await worker.process.wait()
            worker = None
        if worker is not None:
            self._workers.append(worker)
        elif not self._workers:
            log.error("no render worker left: rendering on the event loop")
        for request in orphans:
            if request.future.done():
                continue
            request.deaths += 1
            if request.deaths >= 2:
                request.future.set_exception(
                    RenderError("a render worker died twice while rendering this mail")
                )
            elif self._workers:
                self._send(self._least_busy(), request)
            else:
                try:
                    message = build(
                        self._fallback.renderer,
                        self._recipe.mail,
                        request.n,
                        request.at,
                        self._recipe.signer,
                    )
                except HeraldError as exc:
                    request.future.set_exception(exc)
                else:
                    request.future.set_result(message)

    async def close(self) -> None:
        self._closing = True
        for w in self._workers:
            w.writer.close()  # end of input: the worker exits
        for w in self._workers:
            try:
                await asyncio.wait_for(w.process.wait(), timeout=5)
            except TimeoutError:
                w.process.kill()
                await w.process.wait()
            if w.task is not None:
                w.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w.task
            for request in w.pending:
                if not request.future.done():
                    request.future.cancel()
        self._workers = []


def _frame(obj: object) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


async def _read(reader: asyncio.StreamReader) -> Any:
    try:
        head = await reader.readexactly(_LEN.size)
        # Only ever from our own child, over a socket pair nobody else holds.
        return pickle.loads(await reader.readexactly(_LEN.unpack(head)[0]))  # noqa: S301
    except asyncio.IncompleteReadError:
        return None


def _read_blocking(stream: BinaryIO) -> Any:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    return pickle.loads(stream.read(_LEN.unpack(head)[0]))  # noqa: S301 (from our parent)


def _serve(fd: int, log_format: str) -> None:
    """A worker: build the requests as they come, until the parent closes the socket."""
    # Ctrl-C and SIGTERM reach the whole process group; the parent decides when this ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Failures go back to the parent, which logs them; the load-time warnings it logged too.
    configure("ERROR", log_format)
    sock = socket.socket(fileno=fd)
    inp, out = sock.makefile("rb"), sock.makefile("wb")
    recipe: Recipe = _read_blocking(inp)
    try:
        renderer = recipe.renderer()
        renderer.warm()
    except ConfigError as exc:
        out.write(_frame(("config", (exc.file, exc.key, exc.problem, exc.fix))))
        out.flush()
        return
    freeze_heap()
    out.write(_frame(("ready", os.getpid())))
    out.flush()
    while (request := _read_blocking(inp)) is not None:
        packed, at = request
        try:
            m = build(renderer, recipe.mail, unpack(packed), at, recipe.signer)
            e = m.email
            reply: tuple[Any, ...] = (
                "ok",
                (e.message_id, e.envelope_from, e.envelope_to, e.data, m.locale),
            )
        except HeraldError as exc:
            reply = ("error", type(exc).__name__, str(exc))
        except Exception as exc:  # a filter choking on data: the record's problem, not ours
            reply = ("error", "RenderError", f"{type(exc).__name__}: {exc}")
        out.write(_frame(reply))
        out.flush()


if __name__ == "__main__":
    # Through the package, not this `__main__`: replies must unpickle as service.flow.workers.
    from service.flow.workers import _serve as serve

    serve(int(sys.argv[1]), sys.argv[2])
