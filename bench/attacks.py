"""The attacks (i) and (j): what a hostile client costs the others, and their sections of
RESULTS.md. bench/flood.py is their load generator.

* (i) **login flood**: bob's bystander socket echoes every 20 ms while 0, 16 or 64 clients
  POST /api/login with wrong passwords in tight loops: (1) all from 127.0.0.1 as alice,
  which the server's throttle of failed logins per address soon answers with cheap 429s,
  and (2) each from a loopback address of its own with a username never used before, so
  that every attempt costs a password hash (about 60 ms of scrypt in the server's one
  hashing thread; at most 32 wait, the rest get 503 at once). Cookie and Redis storage.
* (j) **costly frames**: alice sends, on 1 to 20 sockets and as fast as the server reads
  them, `{"event":"echo","data":[[],[],...]}` as large as `--max-message-size` allows
  (read from `python run.py --help`), while bob's bystander echoes. With the read budgets
  off, and, when the server has any, with its defaults.

Each measurement: the server is idle; the bystander and the attacker (separate processes,
both pinned to core 1) set up (log in, connect); the runner gives both one start time; the
attack runs a warm-up and then the measured window, in which the runner reads the server's
CPU time (per thread: the event loop's, the others', i.e. password hashing), the machine's,
and, for (j), how many bytes the server has read from each attacker socket (the kernel's
bytes_received minus what waits in the receive queue, from `ss -tni`). A measurement
during which other processes kept the machine busy, or core 0 ran slow, is taken again, as
in the other scenarios.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.faults import Lines
from bench.flood import HOLD
from bench.loadgen import Meter
from bench.processes import (
    NO_READ_LIMITS,
    ROOT,
    Child,
    core_speed,
    cpu_seconds,
    pinned,
    python,
    rss_bytes,
    wait_idle,
)

BYSTANDER_ADDRESS = "127.0.0.2"  # bob's login and socket
ATTACKER_ADDRESS = "127.0.0.5"  # alice's costly frames
LOGIN_FLOODS = (16, 64)
FRAME_SOCKETS = (1, 5, 20)
QUICK_FRAME_SOCKETS = (1, 20)
P99_TARGET = 0.050  # (i): the bystander's p99 with 64 flooders
FRAMES_WARMUP, FRAMES_WINDOW = 2.0, 5.0  # (j), seconds at least (but with --quick)
READY_WITHIN = 60.0  # seconds the load generators may take to log in and connect
HOLD_WITHIN = 60.0  # seconds after the window the server may take to close the measurement's connections
MODES = {"one": "all from 127.0.0.1, as alice", "spread": "each from its own address, a new username each time"}


@dataclass(frozen=True)
class Point:
    kind: str  # logins | frames
    size: int = 0  # flooding clients, or attacker sockets; 0: the bystander alone
    mode: str = ""  # logins: one | spread; frames: "" | reconnect

    @property
    def label(self) -> str:
        if not self.size:
            return "no attack (the bystander alone)"
        if self.kind == "logins":
            return f"{self.size} flooders, {MODES[self.mode]}"
        if self.mode == "reconnect":
            return (f"{self.size} attacker socket{'s' if self.size > 1 else ''} at a time, each closed and a new one "
                    "opened after every burst (the per-socket budget's burst of frames)")
        return f"{self.size} attacker socket{'s' if self.size > 1 else ''}"

    @property
    def short(self) -> str:
        if not self.size:
            return "none"
        if self.kind == "logins":
            return f"{self.mode} x{self.size}"
        return f"{self.size} sockets" + (" reconn" if self.mode else "")


def points(kind: str, quick: bool) -> list[Point]:
    if kind == "logins":
        return [Point(kind)] + [Point(kind, n, mode) for mode in MODES for n in LOGIN_FLOODS]
    return ([Point(kind)] + [Point(kind, n) for n in (QUICK_FRAME_SOCKETS if quick else FRAME_SOCKETS)]
            + [Point(kind, 1, "reconnect")])


def burst_frames(options: dict[str, Any], size: int) -> int:
    """Frames of `size` bytes in a new socket's byte budget (twice the rate), or 8 without one."""
    budget = options.get("rate_limit_bytes")
    return max(1, int(2 * budget // size)) if budget else 8


# -- what the server offers ------------------------------------------------------------


def server_options(env: dict[str, str]) -> dict[str, Any]:
    """The defaults `python run.py --help` shows with the read budgets left to the server:
    the largest frame, and the budgets (None: the server has no such option)."""
    environ = {k: v for k, v in {**os.environ, **env}.items() if k not in NO_READ_LIMITS}
    done = subprocess.run([python(), "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=environ, stdin=subprocess.DEVNULL)
    text = " ".join(done.stdout.split())

    def option(name: str) -> tuple[str | None, str | None]:
        match = re.search(re.escape(name) + r" [A-Z]+ ([A-Z_]+: [^(]*\(([^;)]*)[^)]*\))", text)
        return (match.group(2), match.group(1)) if match else (None, None)

    size, size_help = option("--max-message-size")
    events, events_help = option("--rate-limit")
    bytes_, bytes_help = option("--rate-limit-bytes")
    return {
        "max_message_size": int(float(size)) if size else 1 << 20,
        "max_message_size_help": size_help,
        "rate_limit": float(events) if events else None, "rate_limit_help": events_help,
        "rate_limit_bytes": float(bytes_) if bytes_ else None, "rate_limit_bytes_help": bytes_help,
    }


def budgets_by_default(options: dict[str, Any]) -> bool:
    """Whether the server limits reading by default (then (j) measures those defaults too)."""
    return bool(options.get("rate_limit") or options.get("rate_limit_bytes"))


# -- measuring -------------------------------------------------------------------------


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of a process's main thread (the event loop) and of all the others."""
    total = cpu_seconds(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        main = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        main = total
    return main, total - main


def socket_fds(pid: int) -> int:
    """How many sockets a process holds open (the listening one included)."""
    count = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            except OSError:
                pass
    except OSError:
        pass
    return count


def server_reads(port: int, peer: str) -> dict[int, int] | None:
    """Bytes the server process has read so far from each connection of `peer` to `port`
    (by peer port): what its kernel received minus what still waits in the receive queue."""
    try:
        out = subprocess.run(["ss", "-Htni", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    reads: dict[int, int] = {}
    current: tuple[int, int] | None = None
    for line in out.splitlines():
        if not line[:1].isspace():
            fields = line.split()
            if len(fields) < 4:
                current = None
                continue
            host, _, peer_port = fields[3].rpartition(":")
            current = (int(peer_port), int(fields[0])) if host == peer else None
        elif current is not None:
            match = re.search(r"bytes_received:(\d+)", line)
            reads[current[0]] = (int(match.group(1)) if match else 0) - current[1]
            current = None
    return reads


@dataclass
class Attacks:
    """What the measurements of one run share: the settings, the processes, the retries."""

    opts: Any  # bench.run.Options: warmup, duration, rounds, quick, retry_budget, best_speed, env
    procs: Any  # bench.processes.Processes
    server_core: int
    loadgen_core: int
    noisy: float
    slow: float
    retries: int
    log: Callable[[str], None]
    measured: int = 0  # measurements so far: the login flood's address block

    def spawn(self, name: str, args: list[str]) -> tuple[subprocess.Popen[str], Lines, Path]:
        stderr_path = self.procs.logdir / f"{name}-{self.measured}.log"
        with open(stderr_path, "w") as stderr:
            process = subprocess.Popen(pinned([python(), "-m", "bench.flood", *args], self.loadgen_core), cwd=ROOT,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                       env={**os.environ, **self.opts.env})
        return process, Lines(process.stdout), stderr_path  # type: ignore[arg-type]

    def once(self, point: Point, running: Any, options: dict[str, Any], redis: Child | None) -> dict[str, Any]:
        url, pid, port = running.urls[0], running.pids[0], running.children[0].port
        self.measured += 1
        children = [("bystander", ["bystander", "--url", url, "--address", BYSTANDER_ADDRESS])]
        if point.size and point.kind == "logins":
            children.append(("logins", ["logins", "--url", url, "--clients", str(point.size), "--mode", point.mode,
                                        "--block", str(10 + self.measured % 240)]))
        elif point.size:
            size = options["max_message_size"]
            children.append(("frames", ["frames", "--url", url, "--sockets", str(point.size), "--size", str(size),
                                        "--address", ATTACKER_ADDRESS, "--reconnect-every",
                                        str(burst_frames(options, size) if point.mode == "reconnect" else 0)]))
        sockets_before = socket_fds(pid)
        spawned = [(name, *self.spawn(name, args)) for name, args in children]
        result: dict[str, Any] = {}
        try:
            ready = {}
            for name, process, lines, stderr in spawned:
                try:
                    ready[name] = lines.expect("ready", time.monotonic() + READY_WITHIN, lambda: None)["ready"]
                except RuntimeError as exc:
                    raise RuntimeError(f"{name}: {exc}: {_tail(stderr)}") from None
            warmup, duration = self.window(point)
            start = time.monotonic() + 0.3
            begin = start + warmup
            end = begin + duration
            for _, process, _, _ in spawned:
                process.stdin.write(json.dumps({"start": start, "begin": begin, "end": end}) + "\n")  # type: ignore[union-attr]
                process.stdin.flush()  # type: ignore[union-attr]
            others = {name: process.pid for name, process, _, _ in spawned}
            if redis is not None and running.server.redis:
                others["redis"] = redis.pid
            meter = Meter(running.pids, others)
            peer_ports = ready.get("frames", {}).get("ports", [])
            _sleep_until(begin)
            reads0 = server_reads(port, ATTACKER_ADDRESS) if peer_ports else None
            threads0 = thread_cpu(pid)
            meter.start()
            _sleep_until(end)
            meter.stop()
            threads1 = thread_cpu(pid)
            reads1 = server_reads(port, ATTACKER_ADDRESS) if peer_ports else None
            rss = rss_bytes(pid)
            for name, process, lines, stderr in spawned:
                try:
                    result[name] = lines.expect("result", end + 60, lambda: None)["result"]
                except RuntimeError as exc:
                    raise RuntimeError(f"{name}: {exc}: {_tail(stderr)}") from None
                result[name]["ready"] = ready[name]
        except (RuntimeError, OSError) as exc:
            return {"error": str(exc)[:500]}
        finally:
            for _, process, _, _ in spawned:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        # Until the server has let go of every connection of the measurement (bounded).
        while (left := socket_fds(pid) - sockets_before) > 0 and time.monotonic() < end + HOLD_WITHIN:
            time.sleep(0.1)
        released = time.monotonic() - end if left <= 0 else None
        figures = meter.figures(1)
        wall = figures["wall"]
        loadgen = sum(figures["other_cpu"].get(name, 0.0) for name, *_ in spawned)
        out = {
            "wall": wall, "server_cpu": figures["server_cpu"], "server_util": figures["server_util"],
            "loop_util": (threads1[0] - threads0[0]) / wall, "threads_util": (threads1[1] - threads0[1]) / wall,
            "redis_util": figures["other_cpu"]["redis"] / wall if "redis" in others else None,
            "loadgen_util": loadgen / wall, "foreign_util": figures["foreign_util"], "rss": rss,
            "released_after": released, "sockets_left": max(0, left), **result,
        }
        if "frames" in result:
            out["reads"] = _reads(peer_ports, reads0, reads1, wall, result["frames"])
        return out

    def window(self, point: Point) -> tuple[float, float]:
        """The warm-up and the window: (j)'s are at least 2 s and 5 s but in quick runs, since the
        server reads a budgeted socket in bursts some seconds apart."""
        if point.kind == "frames" and not self.opts.quick:
            return max(self.opts.warmup, FRAMES_WARMUP), max(self.opts.duration, FRAMES_WINDOW)
        return self.opts.warmup, self.opts.duration

    def measure(self, point: Point, running: Any, options: dict[str, Any], redis: Child | None) -> dict[str, Any]:
        """`once`, again (at most `retries` times, within the run's retry budget) when it
        failed, when other work kept the machine busy, or when core 0 ran slow around it."""
        attempts = []
        while True:
            started = time.monotonic()
            wait_idle(running.pids)  # e.g. the hashing thread still working off a flood's queue
            before = core_speed(self.server_core)
            result = self.once(point, running, options, redis)
            wait_idle(running.pids)
            after = core_speed(self.server_core)
            self.opts.best_speed = max(self.opts.best_speed, before, after)
            result["speed"] = min(before, after) / self.opts.best_speed
            attempts.append(result)
            if "error" not in result and result["foreign_util"] <= self.noisy and result["speed"] >= self.slow:
                break
            if len(attempts) > self.retries or self.opts.retry_budget <= 0 or not running.alive():
                break
            self.log(f"    {running.server.key} {point.short}: {brief(result)}: measuring again")
            time.sleep(1)
            self.opts.retry_budget -= time.monotonic() - started + 1
        ok = [r for r in attempts if "error" not in r]
        best = min(ok, key=lambda r: (r["speed"] < self.slow, r["foreign_util"])) if ok else attempts[-1]
        return {**best, "attempts": len(attempts)}

    def run(self, kind: str, servers: dict[str, Any], restart: Callable[[Any], Any], redis: Child | None,
            options: dict[str, Any], rounds: int) -> dict[str, list[dict[str, Any]]]:
        """Every point on every server, in turns, `rounds` times; servers that died are started again."""
        results: dict[str, list[dict[str, Any]]] = {key: [] for key in servers}
        for r in range(rounds):
            for key in servers:
                for point in points(kind, self.opts.quick):
                    if not servers[key].alive():
                        self.log(f"  {key} died:\n{servers[key].children[0].log_tail()}")
                        self.procs.keep_logs = True
                        servers[key] = restart(servers[key])
                    result = self.measure(point, servers[key], options, redis)
                    result.update(point=asdict(point), round=r, options=options)
                    if "error" in result:
                        self.procs.keep_logs = True
                    results[key].append(result)
                    self.log(f"  round {r + 1}/{rounds} {key:<12} {point.short:<10} {brief(result)}")
        return results


def _sleep_until(moment: float) -> None:
    while (remaining := moment - time.monotonic()) > 0:
        time.sleep(remaining)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])[-600:]
    except OSError:
        return ""


def _reads(ports: list[int], before: dict[int, int] | None, after: dict[int, int] | None, wall: float,
           frames: dict[str, Any]) -> dict[str, Any]:
    """Bytes and frames a second the server read from each attacker socket in the window
    (from the kernel's counters; from what the attacker sent, when `ss` could not tell)."""
    size = frames["size"]
    if ports and before is not None and after is not None and all(p in before and p in after for p in ports):
        per_socket = [(after[p] - before[p]) / wall for p in ports]
        source = "server (ss)"
    elif frames.get("reconnect_every"):  # every connection ends with a closing handshake: all was read
        per_socket = [n * size / wall for n in frames["sent_window"]]
        source = "attacker's sends, each connection closed by a handshake"
    else:  # a socket closed meanwhile, or no `ss`: what the attacker sent (its kernel buffers included)
        per_socket = [n * size / wall for n in frames["sent_window"]]
        source = "attacker's sends"
    total = sum(per_socket)
    return {"source": source, "bytes_per_socket": per_socket, "bytes": total, "frames": total / size,
            "frames_per_socket": [b / size for b in per_socket],
            "sent_frames": sum(frames["sent_window"]) / wall}


# -- figures ---------------------------------------------------------------------------


def brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return "ERROR " + result["error"]
    b = result["bystander"]
    lat = b["latency"]
    text = (f"bystander p50 {_ms(lat.get('p50'))} p99 {_ms(lat.get('p99'))} max {_ms(lat.get('max'))}"
            f" ({b['unanswered']} unanswered)")
    if "logins" in result:
        window = result["logins"]["window"]
        text += "; logins/s " + ", ".join(f"{s} {n / result['wall']:.0f}" for s, n in sorted(window.items()))
    if "reads" in result:
        reads = result["reads"]
        text += f"; attack read {reads['frames']:.1f} frames/s ({reads['bytes'] / 2**20:.2f} MiB/s)"
    text += (f"; server util {result['server_util']:.2f} (loop {result['loop_util']:.2f}, other threads "
             f"{result['threads_util']:.2f}) loadgen {result['loadgen_util']:.2f} foreign {result['foreign_util']:.2f}"
             f" speed {result.get('speed', 1):.2f}")
    return text


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _median(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _by_point(runs: list[dict[str, Any]]) -> dict[Point, list[dict[str, Any]]]:
    out: dict[Point, list[dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(Point(**run["point"]), []).append(run)
    return out


def _lat(runs: list[dict[str, Any]], key: str) -> float | None:
    return _median([r["bystander"]["latency"].get(key) for r in runs])


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {n:,}" for k, n in sorted(counter.items())) or "-"


def _sum(dicts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for k, n in d.items():
            total[k] = total.get(k, 0) + n
    return total


def attack_targets(kind: str, results: dict[str, list[dict[str, Any]]],
                   labels: dict[str, str]) -> list[tuple[Any, ...]]:
    """Rows of the targets table: (letter, what, figure, reference, ratio, target, passed, miss)."""
    rows: list[tuple[Any, ...]] = []
    for key, runs in results.items():
        by = {p: [r for r in rs if "error" not in r] for p, rs in _by_point(runs).items()}
        quiet = by.get(Point(kind), [])
        reference = (f"no attack: p99 {_ms(_lat(quiet, 'p99'))}" if quiet else "-")
        if kind == "logins":
            for mode in MODES:
                ok = by.get(Point(kind, max(LOGIN_FLOODS), mode), [])
                p99 = _lat(ok, "p99")
                passed = None if p99 is None else p99 < P99_TARGET
                rows.append(("i", f"login flood, {labels[key]}: bystander echo p99 with {max(LOGIN_FLOODS)} "
                                  f"flooders {MODES[mode]}", f"p99 {_ms(p99)} (max {_ms(_lat(ok, 'max'))})",
                             reference, None, f"p99 < {P99_TARGET * 1e3:.0f} ms",
                             passed if ok else False, "" if passed else ("no result" if p99 is None else
                                                                         f"p99 {_ms(p99)}")))
        else:
            sizes = [p.size for p in by if p.size]
            if not sizes:
                continue
            ok = by[Point(kind, max(sizes))]
            reads = _median([r["reads"]["bytes"] for r in ok])
            rows.append(("j", f"costly frames, {labels[key]}: bystander echo p99 with {max(sizes)} attacker sockets",
                         f"p99 {_ms(_lat(ok, 'p99'))} (max {_ms(_lat(ok, 'max'))}); server util "
                         f"{_f(_median([r['server_util'] for r in ok]))}; attack read "
                         f"{'-' if reads is None else f'{reads / 2**20:.2f} MiB/s'}",
                         reference, None, "(no target)", None))
    return rows


def logins_section(results: dict[str, list[dict[str, Any]]], labels: dict[str, str]) -> list[str]:
    lines = [
        "bob's bystander socket sends `{\"event\":\"echo\",\"data\":n,\"id\":n}` every 20 ms (on a fixed "
        "schedule) and times each ack; meanwhile N clients POST /api/login with wrong passwords in tight "
        "loops. `one`: all from 127.0.0.1 as alice (after a burst of failures, the server answers 429 "
        "without hashing); `spread`: each client from its own loopback address (127.B.x.y, a new block for "
        "every measurement) with a new username for each attempt (`user{i}-{k}`: unknown names are hashed "
        "against a decoy), so every attempt that is not answered 503 costs one scrypt hash. Logins are "
        "counted by the status of the responses that arrived in the window; the probes are right logins "
        "during the window, one a second each (a probe waits for its answer before the next), of alice "
        "from an address where she logged in before the flood (a \"known browser\") and of bob from "
        "127.0.0.1 (where he logged in before the flood, too). Medians "
        "over the rounds; counts are summed over them.",
        "",
    ]
    head = ["server", "flood", "bystander p50", "p99", "max", "unanswered", "bystander send lag p99",
            "logins/s in the window (by status)", "login latency p50 / p99 (401; 429)",
            "401s since the flood started (per round)", "probe: alice, known address", "probe: bob, from 127.0.0.1",
            "server util (event loop + other threads)", "Redis util", "loadgen util", "foreign", "speed", "rounds ok"]
    lines += ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    errors: list[tuple[str, Point, str]] = []
    for key, point, ok, rounds, cells in _bystander_rows(results, labels, len(head), lines, errors):
        if point.size:
            rates = {s: _median([r["logins"]["window"].get(s, 0) / r["wall"] for r in ok])
                     for s in sorted({s for r in ok for s in r["logins"]["window"]})}
            total = _median([sum(r["logins"]["window"].values()) / r["wall"] for r in ok])
            lat = {s: (_median([r["logins"]["latency"].get(s, {}).get("p50") for r in ok]),
                       _median([r["logins"]["latency"].get(s, {}).get("p99") for r in ok])) for s in ("401", "429")}
            probes = {name: _sum([r["logins"]["probes"][name]["statuses"] for r in ok])
                      for name in ok[0]["logins"]["probes"]}
            probe_lat = {name: _median([r["logins"]["probes"][name]["latency"].get("p50") for r in ok])
                         for name in probes}
            cells += [
                f"{total:,.0f}: " + ", ".join(f"{s} {v:,.0f}" for s, v in rates.items()),
                "; ".join(f"{_ms(p50)} / {_ms(p99)}" for p50, p99 in lat.values()),
                ", ".join(str(r["logins"]["whole"].get("401", 0)) for r in ok),
                *(f"{_counts(probes[name])} (p50 {_ms(probe_lat[name])})" for name in probes),
            ]
        else:
            cells += ["-"] * 5
        cells += [f"{_f(_median([r['server_util'] for r in ok]))} ({_f(_median([r['loop_util'] for r in ok]))} + "
                  f"{_f(_median([r['threads_util'] for r in ok]))})",
                  _f(_median([r["redis_util"] for r in ok])), _f(_median([r["loadgen_util"] for r in ok])),
                  _f(_median([r["foreign_util"] for r in ok])), _f(_median([r.get("speed") for r in ok])),
                  rounds]
        lines.append("| " + " | ".join(cells) + " |")
    for key, point, error in errors:
        lines.append(f"\n* {key} {point.short} error: `{error}`")
    setups = _sum([{f"{name}: {status}": 1 for name, status in r["logins"]["ready"]["setup"].items()}
                   for runs in results.values() for r in runs if "logins" in r])
    if setups:
        lines += ["", "* The right logins before each flood (that make the probes' addresses known), by status: "
                  + _counts(setups) + "."]
    return lines + [""]


def frames_section(results: dict[str, list[dict[str, Any]]], labels: dict[str, str]) -> list[str]:
    options = next((r["options"] for runs in results.values() for r in runs if "options" in r), {})
    size = next((r["frames"]["size"] for runs in results.values() for r in runs if "frames" in r), None)
    lines = [
        f"alice's sockets send `{{\"event\":\"echo\",\"data\":[[],[],...]}}` frames of "
        f"{size if size is not None else options.get('max_message_size', '?'):,} bytes (the server's "
        f"--max-message-size is {options.get('max_message_size', 0):,}) without an id, each socket as fast as the "
        "server reads it (every send waits for TCP); bob's bystander socket echoes every 20 ms as in (i). "
        "**attack read** is what the server read from the attacker's sockets in the window (the kernel's "
        "counters: bytes received minus the receive queue), divided by the frame size for frames; `sent` is "
        "what the attacker's sends completed (kernel buffers included). Server CPU/frame: the server's CPU "
        "in the window over the frames it read (the bystander's 50 echoes a second included).",
        "",
        "* The server's read budgets (`python run.py --help`, with RATE_LIMIT and RATE_LIMIT_BYTES unset): "
        + "; ".join(f"`{name}`: " + (f"{options[key + '_help']}" if options.get(key + "_help") else "not an option "
                                                                                                 "of this server")
                    for name, key in (("--rate-limit", "rate_limit"), ("--rate-limit-bytes", "rate_limit_bytes")))
        + ("." if budgets_by_default(options) else
           ". **This server reads without a budget by default**: the `server defaults` rows were not measured "
           "(they would be the `limits off` rows)."),
        "",
    ]
    head = ["server", "attack", "bystander p50", "p99", "max", "unanswered", "bystander send lag p99",
            "attack read, total", "per socket (min - max)", "attack sent (frames/s)", "server CPU/frame",
            "server util (event loop + other threads)", "server RSS after", "attacker got",
            "attacker's sockets closed (after its logout)", "loadgen util", "foreign", "speed", "rounds ok"]
    lines += ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    errors: list[tuple[str, Point, str]] = []
    for key, point, ok, rounds, cells in _bystander_rows(results, labels, len(head), lines, errors):
        if point.size:
            frames = _median([r["reads"]["frames"] for r in ok])
            mib = _median([r["reads"]["bytes"] for r in ok])
            low = _median([min(r["reads"]["bytes_per_socket"]) for r in ok])
            high = _median([max(r["reads"]["bytes_per_socket"]) for r in ok])
            low_f = _median([min(r["reads"]["frames_per_socket"]) for r in ok])
            high_f = _median([max(r["reads"]["frames_per_socket"]) for r in ok])
            per_frame = _median([r["server_cpu"] / (r["reads"]["frames"] * r["wall"])
                                 for r in ok if r["reads"]["frames"]])
            got = _sum([{**r["frames"]["received"], **{f"close {c}": n for c, n in r["frames"]["closes"].items()}}
                        for r in ok])
            sources = {r["reads"]["source"] for r in ok}
            cells += [
                f"{_f(frames, 1)} frames/s, {mib / 2**10:,.0f} KiB/s" + ("" if sources == {"server (ss)"}
                                                                         else f" ({', '.join(sorted(sources))})"),
                f"{_f(low_f, 1)} - {_f(high_f, 1)} frames/s, {low / 2**10:,.0f} - {high / 2**10:,.0f} KiB/s",
                _f(_median([r["reads"]["sent_frames"] for r in ok]), 1),
                "-" if per_frame is None else f"{per_frame * 1e3:.2f} ms",
            ]
        else:
            got = {}
            cells += ["-"] * 4
        cells += [f"{_f(_median([r['server_util'] for r in ok]))} ({_f(_median([r['loop_util'] for r in ok]))} + "
                  f"{_f(_median([r['threads_util'] for r in ok]))})",
                  f"{_median([r['rss'] for r in ok]) / 2**20:.1f} MiB",
                  _counts(got) if point.size else "-", _released(ok) if point.size else "-",
                  _f(_median([r["loadgen_util"] for r in ok])),
                  _f(_median([r["foreign_util"] for r in ok])), _f(_median([r.get("speed") for r in ok])),
                  rounds]
        lines.append("| " + " | ".join(cells) + " |")
    for key, point, error in errors:
        lines.append(f"\n* {key} {point.short} error: `{error}`")
    return lines + [""]


def _bystander_rows(results: dict[str, list[dict[str, Any]]], labels: dict[str, str], columns: int,
                    lines: list[str], errors: list[tuple[str, Point, str]]) -> Iterator[tuple[Any, ...]]:
    """(server key, point, its good runs, "ok/all" rounds, the bystander's cells) per table row.

    Failed runs go to `errors`; a point with no good run gets an error row in `lines`.
    """
    for key, runs in results.items():
        for point, all_runs in _by_point(runs).items():
            ok = [r for r in all_runs if "error" not in r]
            errors += [(key, point, r["error"]) for r in all_runs if "error" in r]
            if not ok:
                lines.append(_error_row(labels[key], point, columns, len(all_runs)))
                continue
            cells = [labels[key], point.label, _ms(_lat(ok, "p50")), _ms(_lat(ok, "p99")), _ms(_lat(ok, "max")),
                     str(sum(r["bystander"]["unanswered"] for r in ok)),
                     _ms(_median([r["bystander"]["send_lag"].get("p99") for r in ok]))]
            yield key, point, ok, f"{len(ok)}/{len(all_runs)}", cells


def _error_row(label: str, point: Point, columns: int, runs: int) -> str:
    return "| " + " | ".join([label, point.label, "error", *[""] * (columns - 4), f"0/{runs}"]) + " |"


def _released(runs: list[dict[str, Any]]) -> str:
    """When the server had closed every connection of the measurement, after the window (per round)."""
    return ", ".join("-" if r.get("released_after") is None else f"{r['released_after']:.1f} s"
                     + ("" if not r.get("sockets_left") else f" ({r['sockets_left']} left)") for r in runs)


def attack_notes() -> list[str]:
    return [
        "* **(i), (j)** run the bystander (bob, logged in from 127.0.0.2) and the attacker (a second "
        "process) both on core 1; the bystander sends on a fixed schedule whether or not its acks came "
        "back, and an echo still unanswered 15 s after the window counts with the time it waited (so a "
        "stalled server cannot hide in the percentiles). `bystander send lag` is how late the bystander "
        "itself sent against its schedule: when it is large, the load generator's core, not the server, "
        "added latency. The servers' CPU is split by thread: the event loop (the main thread) and the "
        "others (the password-hashing thread of the demo's logins). A measurement starts with the server "
        "idle, so what a flood left in the hashing queue is worked off before the next one.",
        "* **(i)** keeps one server process per storage for all its measurements, as a real server would: "
        "the throttle of failed logins remembers the earlier floods of the run (the `one` flood's address "
        "and alice's name refill at 10 a minute), which is why the first round's count of 401s since the "
        "flood started is the one that shows the burst the throttle lets through.",
        f"* **(j)**: the attack goes on {HOLD:g} s past the window, then the attacker logs out (POST "
        "/api/logout: the server closes every socket of that session at once, a budget's wait included) and "
        "resets its connections; the next measurement waits until the server holds no more sockets than "
        f"before (at most {HOLD_WITHIN:g} s after the window: `attacker's sockets closed`). A reset alone would "
        "not do: the server still reads, and parses, what its kernel had received of a reset connection. The "
        "`reconnect` row closes its socket (a closing handshake, which the server answers once it has read "
        "every frame before it) after each burst of frames a new socket may read at once, and opens another. "
        f"Its warm-up and window are at least {FRAMES_WARMUP:g} s and {FRAMES_WINDOW:g} s (but with --quick): "
        "the server reads a budgeted socket in bursts seconds apart.",
    ]
