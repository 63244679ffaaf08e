"""Process helpers: start pinned children, wait until they serve, read their CPU and RSS,
and kill every one of them at the end, even on error.

Children are started with `taskset -c CORE` (taskset execs the command, so the pid is the
server's own) and inherit the open-files limit, raised to the hard limit by
`raise_open_files()`. Their output goes to log files, never to a pipe nobody reads.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent  # the repository: `python run.py` runs from here
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The environment of every `python run.py` the bench starts: no read budgets. By default the
# server slows down the reading of a user's sockets past a budget of events and bytes a
# second (`--rate-limit`, `--rate-limit-bytes`; a user's sockets share a few sockets' worth),
# and the throughput scenarios drive one user's 50 sockets at tens of thousands of events a
# second: they measure the server's cost per unit of work, not its limits. Only the rows of
# (j) that measure the server's defaults go without it (Processes.start(unset=...)).
NO_READ_LIMITS = {"RATE_LIMIT": "0", "RATE_LIMIT_BYTES": "0"}


def raise_open_files() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_count() -> int:
    return os.cpu_count() or 1


def can_pin() -> bool:
    return shutil.which("taskset") is not None and cpu_count() >= 2


def pinned(command: Sequence[str], core: int | None) -> list[str]:
    """`command` prefixed with `taskset -c core` (as is when pinning is not possible)."""
    if core is None or not can_pin():
        return list(command)
    return ["taskset", "-c", str(core), *command]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu_seconds() -> tuple[float, float]:
    """Busy and stolen CPU seconds of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def core_speed(core: int | None, seconds: float = 0.02, repeats: int = 5) -> float:
    """How fast one core runs pure Python now: rounds of a fixed loop per second, the
    median of `repeats` probes of `seconds` each (one preemption does not count).

    The caller moves itself to `core` meanwhile (the servers there are idle between
    measurements). On a shared virtual machine the host may slow a core down without the
    guest seeing any steal time; this probe sees it.
    """
    old = os.sched_getaffinity(0)
    speeds = []
    try:
        if core is not None and can_pin():
            os.sched_setaffinity(0, {core})
        for _ in range(repeats):
            rounds = 0
            start = time.perf_counter()
            end = start + seconds
            while time.perf_counter() < end:
                total = 0
                for i in range(2000):
                    total += i
                rounds += 1
            speeds.append(rounds / (time.perf_counter() - start))
    finally:
        os.sched_setaffinity(0, old)
    return statistics.median(speeds)


def wait_idle(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until these processes stop using CPU (e.g. done closing a load generator's
    sockets): two samples 0.1 s apart with no clock tick between them, or `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            now = sum(cpu_seconds(pid) for pid in pids)
        except OSError:
            return
        if now == last:
            return
        last = now
        time.sleep(0.1)


# Kernel counters that tell a listen queue overflowed (the SYN or the final ACK was dropped
# and the client retransmits it a second or more later) or fell back to SYN cookies.
TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "SyncookiesSent", "TCPReqQFullDrop")


def tcp_counters() -> dict[str, int]:
    """TCP_COUNTERS from /proc/net/netstat: the whole machine's (its network namespace)."""
    try:
        lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()
                 if line.startswith("TcpExt:")]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    values = dict(zip(lines[0][1:], lines[1][1:]))
    return {name: int(values[name]) for name in TCP_COUNTERS if name in values}


def rss_bytes(pid: int) -> int:
    """The resident set size (VmRSS) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Every child of a bench run; `with Processes() as procs:` kills them all at the end.

    SIGTERM and SIGHUP are turned into SystemExit while it is open, so the cleanup runs then
    too (Ctrl+C already raises KeyboardInterrupt).
    """

    def __init__(self, logdir: Path | None = None) -> None:
        self.logdir = logdir or Path(tempfile.mkdtemp(prefix="bench-logs-"))
        self.children: list[Child] = []
        self.keep_logs = False  # set it when a server's log is worth a look
        self._old_handlers: dict[int, object] = {}

    def __enter__(self) -> Processes:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _exit_on_signal)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop_all()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if exc_type is None and not self.keep_logs:
            shutil.rmtree(self.logdir, ignore_errors=True)
        else:
            print(f"the servers' logs are in {self.logdir}", file=sys.stderr)

    def start(self, name: str, command: Sequence[str], *, core: int | None = None,
              env: dict[str, str] | None = None, port: int | None = None, unset: Sequence[str] = ()) -> Child:
        """Start a child; its environment is ours with `env` on top and without `unset`."""
        log = self.logdir / f"{name}-{len(self.children)}.log"
        environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
        with open(log, "wb") as out:
            process = subprocess.Popen(
                pinned(command, core), cwd=ROOT, env=environ,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        child = Child(name, process, log, port)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 5.0) -> None:
        """Terminate one child (SIGTERM, then SIGKILL after `timeout`)."""
        if child.process.poll() is None:
            child.process.terminate()
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(timeout)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        # SIGTERM all first so they stop in parallel, then reap (SIGKILL stragglers).
        for child in self.children:
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + 5
        for child in list(self.children):
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(5)
        self.children.clear()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def wait_http(child: Child, path: str = "/healthz", timeout: float = 30.0) -> None:
    """Wait until the child answers `GET path` on its port with 200.

    Raises:
        RuntimeError: the child exited or did not answer in time (with its log's tail).
    """
    url = f"http://127.0.0.1:{child.port}{path}"
    deadline = time.monotonic() + timeout
    while True:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{child.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not answer {url} within {timeout:g} s:\n{child.log_tail()}")
        time.sleep(0.05)


def start_redis(procs: Processes, core: int | None, *, port: int | None = None,
                persist: Path | None = None) -> tuple[Child, str]:
    """A private redis-server on a free port (or `port`); returns it and its URL.

    Without `persist` it keeps nothing on disk. With it, it keeps an append-only file in
    that directory (fsync every second; a SIGTERM makes it write and sync the file before
    it exits), so a redis-server started again on the same port and directory comes back
    with every key: the soak (h) restarts Redis without ending its sessions.
    """
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (Debian package redis-server)")
    port = port or free_port()
    persistence = ["--appendonly", "no", "--dir", str(procs.logdir)]
    if persist is not None:
        persist.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(persist)]
    child = procs.start("redis", [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence,
    ], core=core, port=port)
    deadline = time.monotonic() + 30  # loading an append-only file takes a moment
    while True:
        if child.process.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{child.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):  # -LOADING while it reads the file
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return child, f"redis://127.0.0.1:{port}/0"


def http_ok(port: int, path: str = "/healthz", timeout: float = 1.0) -> bool:
    """Whether 127.0.0.1:port answers `GET path` with 200 now (one try, bounded)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def python() -> str:
    return sys.executable
