"""A minimal, fast SMTP sink for load tests: accepts everything and remembers when.

It speaks just enough ESMTP for aiosmtplib and smtplib (EHLO/HELO, MAIL, RCPT, DATA, RSET,
NOOP, QUIT), tolerates pipelined commands, and does no dot-unstuffing: a message ends at the
first CRLF.CRLF. It offers 8BITMIME and takes MAIL's parameters (BODY=8BITMIME) unread, so
Herald sends its 8bit parts as composed, not downgraded to base64 (RFC 6152). For every
accepted message it records the acceptance time (time.time(), taken when the 250 reply is
written) and the value of its Message-ID header.

Run it as its own process so it never shares a GIL with what it measures:

    python -m bench.sink [--host 127.0.0.1] [--port 0]

It prints `ready <port>` and then answers commands on stdin, one per line:
    count          -> `count <n>`      messages accepted since the last dump
    dump <path>    -> `dumped <n>`     write `<accept time>\t<message-id>` lines, then forget them
    quit           -> exits
`SinkProcess` drives it from the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

_GREETING = b"220 bench-sink ESMTP ready\r\n"
_EHLO = (
    b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 104857600\r\n"
)
_OK = b"250 2.0.0 OK\r\n"
_QUEUED = b"250 2.0.0 OK queued\r\n"
_GO = b"354 End data with <CR><LF>.<CR><LF>\r\n"
_BYE = b"221 2.0.0 Bye\r\n"
_UNKNOWN = b"502 5.5.2 Command not recognised\r\n"
_END = b"\r\n.\r\n"


class Recorder:
    """Acceptance times and Message-IDs, in arrival order."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.ids: list[bytes] = []

    def add(self, when: float, mid: bytes) -> None:
        self.times.append(when)
        self.ids.append(mid)

    def __len__(self) -> int:
        return len(self.times)

    def dump(self, path: str) -> int:
        n = len(self.times)
        with open(path, "wb") as f:
            f.writelines(b"%.6f\t%s\n" % (t, m) for t, m in zip(self.times, self.ids, strict=True))
        self.times, self.ids = [], []
        return n


def message_id(message: bytes | bytearray, end: int) -> bytes:
    """The Message-ID header's value from the header block of `message[:end]`, or b""."""
    head_end = message.find(b"\r\n\r\n", 0, end)
    if head_end < 0:
        head_end = end
    head = bytes(message[:head_end]).lower()
    i = head.find(b"\nmessage-id:")
    if i < 0:
        if not head.startswith(b"message-id:"):
            return b""
        i = -1
    start = i + 1 + len(b"message-id:")
    stop = head.find(b"\r\n", start)
    stop = head_end if stop < 0 else stop
    return bytes(message[start:stop]).strip()


class SmtpSession(asyncio.Protocol):
    __slots__ = ("_buf", "_in_data", "_recorder", "_scan", "_transport")

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._buf = bytearray()
        self._in_data = False
        self._scan = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(_GREETING)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        closing = False
        while buf:
            if self._in_data:
                if buf.startswith(b".\r\n") and self._scan == 0:  # empty body
                    end, skip = 0, 3
                else:
                    i = buf.find(_END, self._scan)
                    if i < 0:
                        self._scan = max(0, len(buf) - 4)
                        break
                    end, skip = i + 2, i + 5
                mid = message_id(buf, end)
                del buf[:skip]
                self._in_data = False
                self._scan = 0
                self._recorder.add(time.time(), mid)
                out.append(_QUEUED)
                continue
            i = buf.find(b"\r\n")
            if i < 0:
                break
            verb = bytes(buf[:4]).upper()
            del buf[: i + 2]
            if verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                out.append(_OK)
            elif verb == b"DATA":
                out.append(_GO)
                self._in_data = True
                self._scan = 0
            elif verb in (b"EHLO", b"HELO"):
                out.append(_EHLO if verb == b"EHLO" else b"250 bench-sink\r\n")
            elif verb == b"QUIT":
                out.append(_BYE)
                closing = True
                break
            else:
                out.append(_UNKNOWN)
        assert self._transport is not None
        if out:
            self._transport.write(b"".join(out))
        if closing:
            self._transport.close()


async def serve(host: str, port: int) -> None:
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SmtpSession(recorder), host, port, backlog=512, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"ready {bound}\n")
    sys.stdout.flush()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        cmd, _, arg = line.partition(" ")
        if cmd == "count":
            reply = f"count {len(recorder)}"
        elif cmd == "dump":
            reply = f"dumped {recorder.dump(arg)}"
        else:
            reply = f"error unknown command {cmd!r}"
        sys.stdout.write(reply + "\n")
        sys.stdout.flush()
    server.close()


class SinkProcess:
    """The sink as a child process, driven over its stdin/stdout."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sink", "--host", host, "--port", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=Path(__file__).resolve().parent.parent,
        )
        first = self._read()
        if not first.startswith("ready "):
            raise RuntimeError(f"sink did not start: {first!r}")
        self.host = host
        self.port = int(first.split()[1])
        self.pid = self.proc.pid

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sink exited (code {self.proc.poll()})")
        return line.strip()

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def count(self) -> int:
        return int(self._ask("count").split()[1])

    def dump(self, path: Path) -> list[tuple[float, str]]:
        """Every (acceptance time, Message-ID) since the last dump; the sink forgets them."""
        self._ask(f"dump {path}")
        out = []
        with open(path, encoding="latin-1") as f:
            for line in f:
                t, _, mid = line.rstrip("\n").partition("\t")
                out.append((float(t), mid))
        os.unlink(path)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> SinkProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
