"""Process and machine accounting from /proc (no psutil in the project's venv), the local
broker, and Herald instances as child processes."""

from __future__ import annotations

import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "deploy" / "kafka" / "broker.sh"
_TICK = os.sysconf("SC_CLK_TCK")
UNSUBSCRIBE_KEY = "bench-only-unsubscribe-key-not-a-secret-0123456789"
"""Signs the benchmark's unsubscribe links: optional routes need a key."""
ADDRESS_KEY = "bench-only-address-key-not-a-secret-0123456789"
"""Keys the benchmark's suppression digests."""


def load_herald(routing: Path) -> Any:
    """Herald's loaded config as the benchmark runs it: the repo's schemas and templates."""
    from service.app import load
    from service.settings import Settings

    return load(
        Settings(
            routing_file=routing,
            schemas_dir=ROOT / "schemas",
            templates_dir=ROOT / "templates",
            links={"unsubscribe_secret": UNSUBSCRIBE_KEY},
            policy={"address_key": ADDRESS_KEY},
        )
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, all threads (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid`: Herald's render workers."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process by thread group: the main thread (Herald's event loop),
    librdkafka's own threads (rdk:*), and the rest (executor threads calling into librdkafka)."""
    out = {"main": 0.0, "librdkafka": 0.0, "other threads": 0.0}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
        key = (
            "main"
            if tid == str(pid)
            else "librdkafka"
            if comm.startswith("rdk:")
            else ("other threads")
        )
        out[key] += cpu
    return out


def main_thread_sched(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of the main thread, from
    /proc/<pid>/task/<pid>/schedstat: the wait is CPU contention (other processes, vCPU steal)."""
    try:
        on, wait, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
        return int(on) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def steal_seconds() -> float:
    """Machine-wide time the hypervisor gave this VM's vCPUs to someone else."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return int(parts[7]) / _TICK if len(parts) > 7 else 0.0


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) in MiB."""
    out = {"rss": 0.0, "hwm": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                out["hwm"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over all cores."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return (total - idle) / _TICK, total / _TICK


def machine() -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    import confluent_kafka

    java = subprocess.run(
        ["java", "-version"], capture_output=True, text=True, check=False
    ).stderr.splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "kafka": _kafka_version(),
        "java": java[0] if java else "?",
        "loadavg_at_start": os.getloadavg(),
    }


def _kafka_version() -> str:
    import re

    m = re.search(r"<kafka\.version>([^<]+)<", (ROOT / "deploy/kafka/pom.xml").read_text())
    return m.group(1) if m else "?"


class Broker:
    """The project's single-node KRaft broker on free ports with a throw-away data dir."""

    def __init__(self, data_dir: Path, partitions: int = 2) -> None:
        self.port, self.cport = free_port(), free_port()
        self.env = {
            **os.environ,
            "KAFKA_DATA_DIR": str(data_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.cport),
            "KAFKA_NUM_PARTITIONS": str(partitions),
        }
        self.data_dir = data_dir
        self.bootstrap = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        r = subprocess.run(
            [str(BROKER), "start"], env=self.env, capture_output=True, text=True, timeout=300
        )
        if r.returncode != 0:
            raise RuntimeError(f"broker did not start:\n{r.stdout}\n{r.stderr}")

    @property
    def pid(self) -> int:
        try:
            return int((self.data_dir / "broker.pid").read_text().strip())
        except (OSError, ValueError):
            return 0

    def stop(self) -> None:
        subprocess.run(
            [str(BROKER), "stop"], env=self.env, capture_output=True, timeout=120, check=False
        )


@dataclass
class Herald:
    """One `python -m service run` child with its own sqlite store and HTTP port."""

    name: str
    env: dict[str, str]
    log: Path
    profile: str | None = None
    """None, `py-spy:<out file>` or `cprofile:<out file>`."""
    proc: subprocess.Popen[bytes] | None = None
    http_port: int = field(default_factory=free_port)

    @staticmethod
    def environment(
        *,
        bootstrap: str,
        prefix: str,
        group: str,
        instance: str,
        smtp_port: int,
        routing: Path,
        workdir: Path,
        pool: int,
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HERALD_")}
        env.update(
            {
                "HERALD_ROUTING_FILE": str(routing),
                "HERALD_SCHEMAS_DIR": str(ROOT / "schemas"),
                "HERALD_TEMPLATES_DIR": str(ROOT / "templates"),
                "HERALD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "HERALD_KAFKA__TOPIC_PREFIX": prefix,
                "HERALD_KAFKA__GROUP_ID": f"{prefix}{group}",
                "HERALD_KAFKA__TRANSACTIONAL_ID": f"{prefix}{group}-{instance}",
                "HERALD_SMTP__HOST": "127.0.0.1",
                "HERALD_SMTP__PORT": str(smtp_port),
                "HERALD_SMTP__TLS": "none",
                "HERALD_SMTP__POOL_SIZE": str(pool),
                "HERALD_SMTP__LOCAL_HOSTNAME": "bench.local",
                "HERALD_LOG__LEVEL": "WARNING",
                "HERALD_LINKS__UNSUBSCRIBE_SECRET": UNSUBSCRIBE_KEY,
                "HERALD_POLICY__ADDRESS_KEY": ADDRESS_KEY,
                "HERALD_POLICY__STATE_PATH": str(workdir / f"policy-{instance}.sqlite3"),
                "HERALD_IDEMPOTENCY__PATH": str(workdir / f"idempotency-{instance}.sqlite3"),
                "HERALD_HTTP__HOST": "127.0.0.1",
                "HERALD_PUBLIC__PORT": "0",
            }
        )
        return env

    def start(self) -> None:
        self.env["HERALD_HTTP__PORT"] = str(self.http_port)
        cmd = [sys.executable, "-m", "service", "run"]
        if self.profile and self.profile.startswith("py-spy:"):
            spy, out = self.profile.split(":", 1)[1].split("|")
            cmd = [
                spy,
                "record",
                "--threads",
                "--nonblocking",
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                out,
                "--",
                *cmd,
            ]
        elif self.profile and self.profile.startswith("cprofile:"):
            out = self.profile.split(":", 1)[1]
            cmd = [sys.executable, "-m", "cProfile", "-o", out, "-m", "service", "run"]
        self.proc = subprocess.Popen(
            cmd,
            env=self.env,
            cwd=ROOT,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The Python process running Herald (under py-spy, the child of py-spy)."""
        assert self.proc is not None
        if self.profile and self.profile.startswith("py-spy:"):
            try:
                kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
                return int(kids.split()[0])
            except (OSError, IndexError, ValueError):
                return self.proc.pid
        return self.proc.pid

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/readyz", timeout=1
            ) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def gauges(self) -> dict[str, float]:
        """herald_in_flight (all lanes), herald_consumer_paused and the transaction time's sum
        and count (standard lane) from Herald's /metrics ({} if none)."""
        try:
            text = self._metrics()
        except (urllib.error.URLError, OSError):
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():  # in flight: every lane; paused: the standard lane's
            if line.startswith("herald_in_flight{"):
                out["in_flight"] = out.get("in_flight", 0.0) + float(line.split()[-1])
            elif line.startswith('herald_consumer_paused{lane="standard"}'):
                out["paused"] = float(line.split()[-1])
            elif line.startswith('herald_transaction_seconds_sum{lane="standard"}'):
                out["txn_s"] = float(line.split()[-1])
            elif line.startswith('herald_transaction_seconds_count{lane="standard"}'):
                out["txns"] = float(line.split()[-1])
        return out if "in_flight" in out and "paused" in out else {}

    def lanes(self) -> int:
        """How many consumers (group members) this instance runs, one per lane."""
        return sum(
            line.startswith("herald_consumer_paused{") for line in self._metrics().splitlines()
        )

    def histogram(self, name: str) -> dict[float, float]:
        """Cumulative bucket counts of one of Herald's histograms, summed over its labels
        ({} if Herald does not answer)."""
        try:
            text = self._metrics()
        except (urllib.error.URLError, OSError):
            return {}
        out: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith(name + "_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                bound = math.inf if le == "+Inf" else float(le)
                out[bound] = out.get(bound, 0.0) + float(line.split()[-1])
        return out

    def _metrics(self) -> str:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=1) as r:
            return str(r.read().decode())

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout_s} s; see {self.log}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = 90) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        # Herald handles SIGTERM (drain, commit, leave); under py-spy signal Herald itself.
        pid = self.pid
        os.kill(pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def wait_group_settled(bootstrap: str, group: str, members: int, timeout_s: float = 60) -> float:
    """Until `group` is Stable with `members` members and its assignment has not changed for
    a second; returns the seconds waited.

    An instance is ready once its own lanes have joined, but partitions may still be moving
    to a member that joined later: a record produced then waits for the move (revoke, drain,
    assign, fetch), up to a couple of seconds. That is the cost of a rebalance, not the
    steady state a paced row measures, so paced rows start producing after this.
    """
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    began = time.monotonic()
    last: object = None
    since = began
    while time.monotonic() - began < timeout_s:
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
        shape = (
            desc.state,
            sorted(
                (
                    m.member_id,
                    sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions),
                )
                for m in desc.members
            ),
        )
        now = time.monotonic()
        if shape != last:
            last, since = shape, now
        elif (
            desc.state == ConsumerGroupState.STABLE
            and len(desc.members) == members
            and now - since >= 1.0
        ):
            return now - began
        time.sleep(0.2)
    raise RuntimeError(f"consumer group {group} not settled after {timeout_s} s: {last}")
