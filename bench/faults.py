"""The soak (h): two `python run.py --redis URL` processes on one private redis-server, the
soak's load generator (bench/soak.py) chatting through both for minutes, and two faults in
the middle: a Redis restart and a killed process. Then its section of RESULTS.md.

Timeline (D = the soak's duration, from the moment every socket is in its room):

* 0.30 D: Redis restart. redis-server gets SIGTERM (it writes and syncs its append-only
  file, then exits), stays down OUTAGE seconds, and is started again on the same port and
  directory; it comes back with every session.
* 0.55 D, or once the first window has closed: server B gets SIGKILL. Its sockets drop; a
  replacement starts at once on B's port (the load generator reconnects them there).
* A window runs from MARGIN seconds before a fault's start until every live server answers
  `GET /healthz` with 200 again, plus MARGIN. The load generator classifies every chat by
  its send time (bench/soak.py says who is expected to receive what).

The servers run pinned to core 0, the load generator and redis-server to core 1; RSS and CPU
of every server process are sampled about every second. Every wait is bounded.
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import re
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Callable

from bench.processes import (
    NO_READ_LIMITS,
    ROOT,
    Child,
    Processes,
    cpu_seconds,
    free_port,
    http_ok,
    pinned,
    python,
    rss_bytes,
    start_redis,
    wait_http,
)

OUTAGE = 3.0  # seconds Redis stays down
MARGIN = 1.0  # seconds added before and after each fault window
SAMPLE_EVERY = 1.0  # seconds between RSS/CPU samples
HEALTHY_WITHIN = 60.0  # seconds the servers may take to answer /healthz 200 after a fault
TIMES = ("start", "redis_stopped", "redis_back", "healthy", "begin", "end")  # the monotonic times of a window
# redis-server's `#` lines that every start and stop writes (and the overcommit advice of
# a machine that does not fork for persistence here): not worth a line in RESULTS.md.
REDIS_ROUTINE = re.compile(r"Redis is starting|Redis version=|Configuration loaded|Server initialized|"
                           r"Memory overcommit|User requested shutdown|ready to exit|Bye bye")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")


@dataclass(frozen=True)
class SoakSettings:
    duration: float = 180.0  # seconds of chat
    rate: float = 200.0  # chats per second (each reaches about connections / rooms sockets)
    connections: int = 1000
    rooms: int = 20
    sessions: int = 10
    redis_at: float = 0.30  # when the Redis restart starts, as a fraction of the duration
    kill_at: float = 0.55  # when server B is killed


class Lines:
    """The load generator's JSON lines, read by a thread, so every wait can be bounded."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                self._queue.put(json.loads(line))
            except ValueError:
                pass  # not one of ours: the load generator's own output goes to stderr
        self._queue.put(None)

    def expect(self, key: str, deadline: float, tick: Callable[[], None]) -> dict[str, Any]:
        """The next line holding `key`; `tick()` runs about every second meanwhile."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"the soak's load generator sent no {key!r} in time")
            try:
                message = self._queue.get(timeout=min(SAMPLE_EVERY, remaining))
            except queue.Empty:
                tick()
                continue
            if message is None:
                raise RuntimeError(f"the soak's load generator exited before sending {key!r}")
            if key in message:
                return message


class Soak:
    """The processes of one soak, its faults and its samples."""

    def __init__(self, settings: SoakSettings, procs: Processes, command: Callable[[int, str], list[str]],
                 env: dict[str, str], server_core: int, loadgen_core: int, log: Callable[[str], None]) -> None:
        self.settings, self.procs, self.command, self.env = settings, procs, command, env
        self.server_core, self.loadgen_core, self.log = server_core, loadgen_core, log
        self.persist = procs.logdir / "soak-redis"
        self.redis, self.redis_url = start_redis(procs, loadgen_core, persist=self.persist)
        self.redises = [self.redis]  # every redis-server started, for their logs
        self.servers: dict[str, Child] = {}
        self.all_servers: dict[str, Child] = {}  # the killed one too, for its log
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.last_sample = 0.0

    def start_server(self, name: str, port: int | None = None) -> Child:
        port = port or free_port()
        child = self.procs.start(f"soak-{name}", self.command(port, self.redis_url), core=self.server_core,
                                 env={**self.env, **NO_READ_LIMITS}, port=port)  # no read budgets
        wait_http(child)
        self.servers[name] = self.all_servers[name] = child
        return child

    def sample(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_sample < SAMPLE_EVERY:
            return
        self.last_sample = now
        for name, child in [*self.servers.items(), ("redis", self.redis)]:
            try:
                self.samples.append({"t": now - self.t0, "process": name, "pid": child.pid,
                                     "rss": rss_bytes(child.pid), "cpu": cpu_seconds(child.pid)})
            except (OSError, RuntimeError):
                pass  # it just died

    def wait_until(self, moment: float) -> None:
        while (remaining := moment - time.monotonic()) > 0:
            time.sleep(min(SAMPLE_EVERY, remaining))
            self.sample()

    def healthy(self) -> float:
        """When every live server answered /healthz 200 (polled every 50 ms, bounded)."""
        deadline = time.monotonic() + HEALTHY_WITHIN
        waiting = dict(self.servers)
        while waiting:
            for name, child in list(waiting.items()):
                if http_ok(child.port):  # type: ignore[arg-type]
                    del waiting[name]
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{', '.join(waiting)} did not answer /healthz 200 within {HEALTHY_WITHIN:g} s")
            time.sleep(0.05)
        return time.monotonic()

    def restart_redis(self) -> dict[str, Any]:
        start = time.monotonic()
        port = self.redis.port
        self.procs.stop(self.redis)  # SIGTERM: redis-server syncs its append-only file and exits
        stopped = time.monotonic()
        time.sleep(OUTAGE)
        self.redis, _ = start_redis(self.procs, self.loadgen_core, port=port, persist=self.persist)
        self.redises.append(self.redis)
        back = time.monotonic()
        healthy = self.healthy()
        self.log(f"  Redis restart: down {back - stopped:.1f} s, servers healthy {healthy - back:.2f} s after "
                 f"it was back")
        return {"name": "Redis restart", "start": start, "redis_stopped": stopped, "redis_back": back,
                "healthy": healthy, "begin": start - MARGIN, "end": healthy + MARGIN}

    def kill_server(self, name: str) -> dict[str, Any]:
        victim = self.servers.pop(name)
        start = time.monotonic()
        victim.process.kill()
        victim.process.wait(10)
        self.procs.children.remove(victim)
        replacement = self.start_server(name + "'", victim.port)  # waits for its /healthz 200
        healthy = self.healthy()
        self.log(f"  SIGKILL of server {name}: replacement healthy {healthy - start:.2f} s later")
        return {"name": f"SIGKILL of server {name}", "start": start, "replacement_pid": replacement.pid,
                "healthy": healthy, "begin": start - MARGIN, "end": healthy + MARGIN}


def run_soak(settings: SoakSettings, procs: Processes, command: Callable[[int, str], list[str]],
             env: dict[str, str], server_core: int, loadgen_core: int, log: Callable[[str], None]) -> dict[str, Any]:
    """One soak; the result holds the load generator's figures, the faults, RSS and logs,
    or `error` (with what was measured until then)."""
    soak = Soak(settings, procs, command, env, server_core, loadgen_core, log)
    a, b = soak.start_server("A"), soak.start_server("B")
    cmd = [python(), "-m", "bench.soak", "--url", f"http://127.0.0.1:{a.port}", "--url", f"http://127.0.0.1:{b.port}",
           "--connections", str(settings.connections), "--rooms", str(settings.rooms),
           "--sessions", str(settings.sessions), "--rate", str(settings.rate), "--duration", str(settings.duration)]
    stderr_path = procs.logdir / "soak-loadgen.log"
    result: dict[str, Any] = {"settings": {**asdict(settings), "outage": OUTAGE, "margin": MARGIN}}
    with open(stderr_path, "w") as stderr:
        loadgen = subprocess.Popen(pinned(cmd, loadgen_core), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=stderr, text=True, env={**os.environ, **env})
    lines = Lines(loadgen.stdout)  # type: ignore[arg-type]
    windows: list[dict[str, Any]] = []
    ready = None
    try:
        ready = lines.expect("ready", time.monotonic() + 180, soak.sample)["ready"]
        soak.t0 = ready
        soak.samples.clear()  # those of the connecting phase: RSS is compared from the start of the chat
        soak.sample(force=True)
        log(f"  {settings.connections} sockets in {settings.rooms} rooms; chatting for {settings.duration:g} s")
        soak.wait_until(ready + settings.redis_at * settings.duration)
        windows.append(soak.restart_redis())
        soak.wait_until(max(ready + settings.kill_at * settings.duration, windows[-1]["end"] + 2 * MARGIN))
        windows.append(soak.kill_server("B"))
        lines.expect("stopped", ready + settings.duration + 120, soak.sample)
        soak.sample(force=True)
        loadgen.stdin.write(json.dumps({"windows": windows}) + "\n")  # type: ignore[union-attr]
        loadgen.stdin.flush()  # type: ignore[union-attr]
        result["client"] = lines.expect("chats", time.monotonic() + 180, lambda: None)
        loadgen.wait(30)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        procs.keep_logs = True
        result["error"] = f"{exc}; the load generator's stderr: " + _tail(stderr_path)
    finally:
        if loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait(10)
        for child in [*soak.servers.values(), soak.redis]:
            procs.stop(child)
    late = [w for w in windows if ready is not None and w["end"] > ready + settings.duration]
    if late:
        result["warning"] = f"{', '.join(w['name'] for w in late)} ended after the chat stopped"
    result["faults"] = [{k: v - soak.t0 if k in TIMES else v for k, v in w.items()} for w in windows]
    result["memory"] = _memory(soak.samples, settings.duration)
    result["logs"] = {name: _log_summary(child.log, soak.t0) for name, child in soak.all_servers.items()}
    result["redis_logs"] = {f"pid {child.pid}": _redis_warnings(child.log) for child in soak.redises}
    if "error" not in result:
        client = result["client"]
        log(f"  chats {client['chats']:,}; deliveries lost outside/inside windows {client['lost'][0]:,}/"
            f"{client['lost'][1]:,} of {client['expected'][0]:,}/{client['expected'][1]:,}; duplicates "
            f"{sum(client['duplicates'])}; {client['deliveries_per_second']:,.0f} deliveries/s")
    else:
        log(f"  ERROR {result['error'][:300]}")
    return result


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])[-2000:]
    except OSError:
        return ""


def _memory(samples: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    """RSS and CPU of each process (by name and pid): first, middle (nearest D/2), last, peak."""
    out: dict[str, Any] = {}
    for sample in samples:
        out.setdefault(f"{sample['process']} (pid {sample['pid']})", []).append(sample)
    figures = {}
    for name, series in out.items():
        middle = min(series, key=lambda s: abs(s["t"] - duration / 2))
        figures[name] = {
            "first": series[0], "middle": middle, "last": series[-1], "peak_rss": max(s["rss"] for s in series),
            "cpu": series[-1]["cpu"] - series[0]["cpu"], "span": series[-1]["t"] - series[0]["t"],
        }
    return figures


def _redis_warnings(path: Path, keep: int = 10) -> list[str]:
    """redis-server's own warnings (`#` lines: a slow fsync, a refused write, ...), but the routine ones."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line.strip()[:300] for line in lines if " # " in line and not REDIS_ROUTINE.search(line)][:keep]


def _log_summary(path: Path, t0: float, keep: int = 12) -> dict[str, Any]:
    """Warnings and errors of one server's log: counts by level, distinct messages (numbers
    masked) with their count and the first time (seconds from the chat's start)."""
    offset = time.time() - time.monotonic()  # the log's wall clock -> our monotonic clock
    levels: dict[str, int] = {}
    messages: dict[str, list[Any]] = {}
    tracebacks = 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {"levels": {}, "messages": [], "tracebacks": 0}
    for line in text.splitlines():
        if line.startswith("Traceback"):
            tracebacks += 1
        match = LOG_LINE.match(line)
        if match is None or match.group(3) in ("DEBUG", "INFO"):
            continue
        level, message = match.group(3), match.group(4)
        levels[level] = levels.get(level, 0) + 1
        stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
        t = stamp + int(match.group(2)) / 1000 - offset - t0
        key = f"{level} " + re.sub(r"\d+(\.\d+)?", "N", message)[:200]
        if key in messages:
            messages[key][0] += 1
        else:
            messages[key] = [1, round(t, 1), message[:300]]
    ordered = sorted(messages.items(), key=lambda item: item[1][1])
    return {"levels": levels, "tracebacks": tracebacks,
            "messages": [{"count": n, "first": t, "message": example} for _, (n, t, example) in ordered[:keep]],
            "distinct": len(messages)}


# -- RESULTS.md ------------------------------------------------------------------------


def soak_targets(runs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows of the targets table: (letter, what, figure, reference, ratio, target, passed, miss)."""
    if not runs:
        return []
    run = runs[0]
    if "error" in run:
        return [("h", "soak: the run", "ERROR", "-", None, "it runs", False, "error")]
    c = run["client"]
    lost, expected, dups = c["lost"][0], c["expected"][0], sum(c["duplicates"])
    acks_bad = sum(n for k, n in c["acks"][0].items() if k != "ok")
    return [
        ("h", "soak: deliveries lost outside fault windows", f"{lost:,} of {expected:,}", "-", None, "0 lost",
         lost == 0, f"{lost:,} lost"),
        ("h", "soak: chats outside fault windows not answered `ok`", f"{acks_bad:,} of {c['chats_per_class'][0]:,}",
         "-", None, "0", acks_bad == 0, f"{acks_bad:,}"),
        ("h", "soak: duplicate deliveries (anywhere)", f"{dups:,}", "-", None, "0", dups == 0, f"{dups:,}"),
    ]


def soak_section(run: dict[str, Any]) -> list[str]:
    s = run["settings"]
    lines = [
        f"{s['connections']:,} sockets (half on each process; {s['sessions']} sessions of alice and bob, each with "
        f"sockets on both), {s['rooms']} rooms of about {s['connections'] // s['rooms']} (each with members on both "
        f"processes), {s['rate']:g} chats per second from random members for {s['duration']:g} s. Redis keeps an "
        f"append-only file. Windows: from {s['margin']:g} s before a fault's start to {s['margin']:g} s after "
        "every live server answered /healthz 200 again (times from the start of the chat).",
        "",
    ]
    if run.get("warning"):
        lines += [f"**Warning: {run['warning']}.**", ""]
    if run.get("faults"):
        lines += ["| fault | start | servers healthy again | window |", "| --- | --- | --- | --- |"]
        for f in run["faults"]:
            extra = (f" (Redis down {f['redis_back'] - f['redis_stopped']:.1f} s, healthy "
                     f"{f['healthy'] - f['redis_back']:.2f} s after it was back)" if "redis_back" in f else "")
            lines.append(f"| {f['name']} | {f['start']:.1f} s | {f['healthy']:.1f} s "
                         f"({f['healthy'] - f['start']:.2f} s later){extra} | {f['begin']:.1f} s - {f['end']:.1f} s |")
        lines.append("")
    if "error" in run:
        return lines + [f"**ERROR:** `{run['error']}`", ""] + _memory_table(run) + _logs(run)
    c = run["client"]
    kills = [f["start"] for f in run.get("faults", []) if f["name"].startswith("SIGKILL")]
    since = f", {c['rooms_at'] - kills[-1]:.1f} s after the kill" if kills else ""
    lines += [
        "| | outside fault windows (target: nothing lost) | inside fault windows |",
        "| --- | --- | --- |",
        f"| chats sent | {c['chats_per_class'][0]:,} | {c['chats_per_class'][1]:,} |",
        f"| acks | {_acks(c['acks'][0])} | {_acks(c['acks'][1])} |",
        f"| deliveries expected | {c['expected'][0]:,} | {c['expected'][1]:,} |",
        f"| deliveries received | {c['received'][0]:,} | {c['received'][1]:,} |",
        f"| **deliveries lost** | **{c['lost'][0]:,}** | {c['lost'][1]:,} |",
        f"| duplicates | {c['duplicates'][0]:,} | {c['duplicates'][1]:,} |",
        f"| delivery latency p50 / p99 / max | {_lat(c['latency'][0])} | {_lat(c['latency'][1])} |",
        "",
        f"* Deliveries: {c['deliveries_per_second']:,.0f} per second over the chat; load generator util "
        f"{c['loadgen_util']:.2f} (one core).",
        "* Received but not expected (not counted above): "
        + (", ".join(f"{k}: {n:,}" for k, n in c["unexpected"].items()) or "none")
        + f"; chats received before a join ack while joining: {c['early']:,}.",
        "* Sockets closed by the server or the network: "
        + (", ".join(f"{k}: {n}" for k, n in sorted(c["drops"].items())) or "none")
        + f"; back in their room: {c['reconnected']} (time to come back p50 / p99 / max: "
        f"{_lat(c['reconnect_time'])}), gave up: {c['gave_up']}; failed attempts meanwhile: "
        + (", ".join(f"{k}: {n}" for k, n in sorted(c["reconnect_failures"].items())) or "none")
        + f"; new logins: {c['logins']}.",
        f"* Connected at the end: {c['connected_at_end']:,} of {c['sockets']:,}. Room sizes the server acks "
        f"at the end ({c['rooms_at']:.1f} s{since}, a `join` again; a killed process's members count until its "
        "instance key expires, at most --instance-ttl = 10 s after the kill) against the sockets connected: "
        + _rooms(c["rooms"]) + ".",
    ]
    if c["frames"]:
        lines.append("* Other frames: " + ", ".join(f"{k}: {n}" for k, n in c["frames"].items()) + ".")
    if c.get("latency_by_pair"):
        lines.append("* Delivery latency outside the windows by sender's -> recipient's process (p50 / p99 / max): "
                     + "; ".join(f"{k}: {_lat(v)} ({v['n']:,})" for k, v in c["latency_by_pair"].items()) + ".")
    slow = [b for b in c.get("latency_by_time", []) if b[2]]
    if slow:
        lines.append("* Slow deliveries by send time (every 5 s bin with one over 100 ms: deliveries, over "
                     "100 ms, over 1 s, max): "
                     + "; ".join(f"{b[0]}-{b[0] + 5} s: {b[1]:,}, {b[2]:,}, {b[3]:,}, {b[4] * 1e3:.0f} ms"
                                 for b in slow) + ".")
    losses = c.get("losses") or {}
    if losses.get("by_pair"):
        lines.append("* Lost deliveries by window, sender's process -> recipient's process: "
                     + ", ".join(f"{k}: {n:,}" for k, n in sorted(losses["by_pair"].items())) + ".")
        lines.append("* Lost deliveries by send time: "
                     + ", ".join(f"{k}: {n:,}" for k, n in losses["by_time"].items()) + ".")
    if losses.get("examples"):
        lines.append("* Examples of deliveries lost outside the windows: "
                     + "; ".join(json.dumps(e) for e in losses["examples"][:5]) + ".")
    return lines + [""] + _memory_table(run) + _logs(run)


def _memory_table(run: dict[str, Any]) -> list[str]:
    rows = ["| process | RSS at its first sample | RSS in the middle | RSS at its last sample | growth | peak | "
            "CPU seconds (util) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in run.get("memory", {}).items():
        first, middle, last = m["first"], m["middle"], m["last"]
        rows.append(f"| {name} | {_mib(first['rss'])} at {first['t']:.0f} s | {_mib(middle['rss'])} at "
                    f"{middle['t']:.0f} s | {_mib(last['rss'])} at {last['t']:.0f} s | "
                    f"{(last['rss'] - first['rss']) / 2**20:+.1f} MiB | {_mib(m['peak_rss'])} | "
                    f"{m['cpu']:.1f} ({m['cpu'] / m['span'] if m['span'] else 0:.2f}) |")
    return rows + [""]


def _logs(run: dict[str, Any]) -> list[str]:
    out = ["Warnings and errors in the servers' logs (`--log-level warning`; first seen, seconds from the start "
           "of the chat):", ""]
    for name, summary in run.get("logs", {}).items():
        levels = ", ".join(f"{k} {n}" for k, n in summary["levels"].items()) or "none"
        out.append(f"* server {name}: {levels}; tracebacks: {summary['tracebacks']}")
        for m in summary["messages"]:
            out.append(f"  * {m['count']} x, first at {m['first']:.1f} s: `{m['message']}`")
    for name, warnings in run.get("redis_logs", {}).items():
        out.append(f"* redis-server {name}: " + ("; ".join(f"`{w}`" for w in warnings) or "no warnings"))
    return out + [""]


def _acks(acks: dict[str, int]) -> str:
    return ", ".join(f"{k} {n:,}" for k, n in sorted(acks.items(), key=lambda kv: -kv[1])) or "-"


def _lat(s: dict[str, Any]) -> str:
    if not s.get("n"):
        return "-"
    return " / ".join(f"{s[k] * 1e3:.1f} ms" for k in ("p50", "p99", "max"))


def _rooms(rooms: list[dict[str, Any]]) -> str:
    wrong = [r for r in rooms if r["reported"] != r["connected"]]
    if not wrong:
        return f"all {len(rooms)} exact"
    return (f"{len(rooms) - len(wrong)} of {len(rooms)} exact; "
            + ", ".join(f"r{r['room']} {r['reported']} for {r['connected']}" for r in wrong))


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def soak_notes() -> list[str]:
    return [
        "* **(h)** runs two `python run.py --redis URL` processes (A and B, both on core 0) on one private "
        "redis-server, and bench/soak.py (on core 1) with every socket in one room and one session. A "
        "chat's text carries a unique id and its send time; every socket records what it received. A "
        "socket is a member of its room from its join ack until it is seen closing, or until the fault's "
        "start when it closed inside a fault window (a socket of the killed process is not expected from "
        "the kill on). A chat acked `{\"ok\": true}` is expected once by every member of its room at its "
        "send time, the sender included; a chat answered with an error expects nothing, and one whose "
        "socket closed before the ack is counted apart. A chat belongs to a fault window when it was sent "
        "within it. **Redis persists for this scenario** (an append-only file; SIGTERM makes redis-server "
        "sync it before exiting), so the restart loses no session: the sockets stay open through the "
        "outage and every loss is a lost delivery or ack, not a logout. Without it every session would end "
        "at the restart (4001 on the next event, or at the next session check for a silent socket) and the "
        "whole crowd would log in and reconnect after the window, mixing that storm into the figures "
        "outside the windows. The killed process's sockets reconnect (with backoff and jitter) to its "
        "replacement on the same port and join again; they are expected from their new join ack.",
    ]
