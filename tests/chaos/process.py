"""Herald as a real process: `python -m service run` with HERALD_* settings, its output in a log
file, stopped with SIGTERM or killed with SIGKILL, and watched for dying on its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from service.testing import free_port
from tests.conftest import ROOT


class HeraldCrashed(AssertionError):
    pass


class HeraldProcess:
    """One Herald instance; restarts of it keep its name, transactional id and sqlite store."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = 0
        self.starts = 0
        self.exits: list[int] = []

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.alive, f"{self.name} already running"
        self.http_port = free_port()
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"=== chaos: start #{self.starts} of {self.name}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "run"],
                cwd=ROOT,
                env={**self.env, "HERALD_HTTP__PORT": str(self.http_port)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until /readyz says the instance joined its group."""
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.1)
        raise HeraldCrashed(f"{self.name} not ready within {timeout_s} s\n{self.tail()}")

    def check(self) -> None:
        """Raise if the instance died without being told to."""
        if self.proc is not None and self.proc.poll() is not None:
            rc = self.proc.returncode
            self.exits.append(rc)
            self.proc = None
            raise HeraldCrashed(f"herald {self.name} exited by itself, rc={rc}\n{self.tail()}")

    def kill9(self) -> None:
        assert self.proc is not None, f"{self.name} is not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.exits.append(self.proc.wait(30))
        self.proc = None

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then wait for the graceful drain; SIGKILL past the deadline."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(30)
        self.exits.append(rc)
        self.proc = None
        return rc

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        shown = [ln if len(ln) < 600 else ln[:600] + "…" for ln in text[-lines:]]
        return f"--- last {len(shown)} lines of {self.log}:\n" + "\n".join(shown)
