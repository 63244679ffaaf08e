"""The bench runner: every scenario of issue 5, against raw aiohttp and python-socketio, the
storm and soak of issue 8, and two attacks, in one run on this machine; writes bench/RESULTS.md,
its figures as bench/RESULTS.json, and its charts in bench/charts/ (bench/charts.py).

    python -m bench                      # the full run (about 27 minutes; (g), (h) about 7 of them, (i), (j) 10)
    python -m bench --quick              # a smoke check (about 3 minutes) -> bench/RESULTS-quick.md
    python -m bench --scenarios a,b --duration 3 --rounds 5
    python -m bench --scenarios g,h --soak-duration 60     # the storm, and a shorter soak
    python -m bench --scenarios i,j      # the login flood and the costly frames
    python -m bench --scenarios n --output /tmp/metrics.md   # echo with and without run.py --metrics

Each server runs as its own process pinned to core 0 (`taskset -c 0`); the load generator
(bench/loadgen.py) is a separate process pinned to core 1, and so is the private
redis-server. The servers of a scenario run side by side and are measured in turns,
round after round (ours, raw, socketio, ours, raw, socketio, ...), because the machine's
speed drifts; the tables show medians over the rounds. Ratios are computed from the
server's CPU time per unit of work (utime + stime from /proc/PID/stat over the measured
window), because a Python load generator may itself be the bottleneck of throughput.

The soak (h) is not measured in rounds: it is one long run with faults, driven by
bench/faults.py (the processes and the faults) and bench/soak.py (its load generator).
The attacks (i) and (j) measure what a hostile client costs a bystander's socket, driven by
bench/attacks.py (the measurements) and bench/flood.py (the bystander and the attackers).

Every `python run.py` gets RATE_LIMIT=0 and RATE_LIMIT_BYTES=0 in its environment (no read
budgets; bench/processes.py, NO_READ_LIMITS), but the (j) server that measures the defaults.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.attacks import (  # noqa: E402
    Attacks,
    attack_notes,
    attack_targets,
    budgets_by_default,
    frames_section,
    logins_section,
    server_options,
)
from bench.faults import SoakSettings, run_soak, soak_notes, soak_section, soak_targets  # noqa: E402
from bench.loadgen import USER_PASSWORD, user_name  # noqa: E402
from bench.processes import (  # noqa: E402
    NO_READ_LIMITS,
    ROOT,
    Child,
    Processes,
    can_pin,
    core_speed,
    free_port,
    pinned,
    python,
    raise_open_files,
    start_redis,
    wait_http,
    wait_idle,
)

SERVER_CORE, LOADGEN_CORE = 0, 1
# A measurement during which the rest of the machine kept more than NOISY of a core busy
# is taken again, at most RETRIES times (this machine is shared).
# So is one during which core 0 ran pure Python slower than SLOW times the fastest speed
# seen in the run, probed just before and just after it (the host slows this virtual
# machine down at times, with no steal time to show for it).
# Retries stop once they have taken --retry-budget seconds in all.
NOISY, SLOW, RETRIES = 0.3, 0.7, 2
BENCH = Path(__file__).resolve().parent


# -- servers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    proto: str  # the load generator's --proto
    kind: str  # ours | raw | rawstr | rawsession | sio
    redis: bool = False
    processes: int = 1
    log_level: str = "warning"
    cold_allocator: bool = False  # reference servers: skip warm_allocator() (raw_server.py)
    loadgen_args: tuple[str, ...] = ()  # what the load generator does differently for this row
    read_limits: bool = False  # ours: keep the server's default read budgets (else NO_READ_LIMITS)
    loop: str = "asyncio"  # ours: run.py --loop (the references run on asyncio's loop)
    workers: int = 1  # ours: run.py --workers (one port)
    args: tuple[str, ...] = ()  # ours: more run.py options
    presence: bool = True  # ours: run.py --presence (the demo's rooms track who is in them)
    users: int = 0  # ours: demo users u01..uNN (DEMO_USERS), for scenarios of many users

    def command(self, port: int, redis_url: str | None) -> list[str]:
        if self.kind == "ours":
            cmd = [python(), "run.py", "--port", str(port), "--log-level", self.log_level, "--loop", self.loop,
                   "--workers", str(self.workers), "--presence", "on" if self.presence else "off", *self.args]
            return cmd + (["--redis", redis_url] if self.redis and redis_url else [])
        cold = ["--cold-allocator"] if self.cold_allocator else []
        if self.kind in ("raw", "rawstr", "rawsession"):
            return [python(), "bench/raw_server.py", "--port", str(port),
                    "--mode", "str" if self.kind == "rawstr" else "json", *cold,
                    *(["--session"] if self.kind == "rawsession" else [])]
        return [python(), "bench/socketio_server.py", "--port", str(port), *cold]


SERVERS = {s.key: s for s in [
    Server("ours", "ours, cookie storage", "ours", "ours"),
    Server("ours-redis", "ours, Redis storage", "ours", "ours", redis=True),
    Server("ours-uvloop", "ours, cookie storage, uvloop", "ours", "ours", loop="uvloop"),
    Server("ours-redis-uvloop", "ours, Redis storage, uvloop", "ours", "ours", redis=True, loop="uvloop"),
    Server("ours-redis-own", "ours, Redis storage, a session per connection", "ours", "ours", redis=True,
           loadgen_args=("--own-sessions",)),
    Server("ours-fresh", "ours, cookie storage, a new cookie for every handshake", "ours", "ours",
           loadgen_args=("--fresh-cookies",)),
    Server("ours-info", "ours, cookie storage, default --log-level info", "ours", "ours", log_level="info"),
    Server("ours-metrics", "ours, cookie storage, run.py --metrics", "ours", "ours", args=("--metrics",)),
    Server("ours-2proc", "ours x2 processes, Redis backplane", "ours", "ours", redis=True, processes=2),
    Server("raw", "raw aiohttp + stdlib json", "raw", "raw"),
    Server("raw-cold", "raw aiohttp + stdlib json, cold allocator (see notes)", "raw", "raw",
           cold_allocator=True),
    Server("rawstr", "raw aiohttp, no JSON (echoes the string)", "rawstr", "rawstr"),
    Server("raw-session", "aiohttp + aiohttp-session cookie sessions, no library", "ours", "rawsession"),
    Server("sio", "python-socketio AsyncServer", "sio", "sio"),
    Server("ours-workers2", "ours, run.py --workers 2 on one port, Redis backplane (both on core 0)", "ours", "ours",
           redis=True, workers=2),
    Server("ours-4proc", "ours x4 processes, Redis backplane, every member of the room on the first", "ours",
           "ours", redis=True, processes=4, loadgen_args=("--room-on-first", "--bystanders", "50")),
    Server("ours-soak", "ours x2 processes, Redis with an append-only file", "ours", "ours", redis=True,
           processes=2),
    Server("ours-nohist", "ours, cookie storage, --history-size 0 (no positions, no recovery)", "ours", "ours",
           args=("--history-size", "0")),
    Server("ours-redis-nohist", "ours, Redis storage, --history-size 0", "ours", "ours", redis=True,
           args=("--history-size", "0")),
    Server("ours-budgets", "ours, cookie storage, the server's default read budgets", "ours", "ours",
           read_limits=True),
    Server("ours-presence", "ours, cookie storage, presence on", "ours", "ours", users=50),
    Server("ours-nopresence", "ours, cookie storage, --presence off", "ours", "ours", users=50, presence=False),
    Server("ours-redis-presence", "ours, Redis storage, presence on", "ours", "ours", redis=True, users=50),
    Server("ours-redis-nopresence", "ours, Redis storage, --presence off", "ours", "ours", redis=True, users=50,
           presence=False),
]}


@dataclass
class Running:
    server: Server
    children: list[Child]
    workers: list[int] = field(default_factory=list)  # with --workers: the processes that serve

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{c.port}" for c in self.children]

    @property
    def pids(self) -> list[int]:
        return self.workers or [c.pid for c in self.children]

    def alive(self) -> bool:
        return all(c.process.poll() is None for c in self.children)


# -- scenario groups -------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Scenarios measured together: the servers they need run side by side, in rounds."""

    name: str
    title: str
    loadgen: str  # the load generator's scenario
    needs: dict[str, tuple[str, ...]]  # scenario letter -> the servers it needs
    connections: int
    quick_connections: int
    fresh: bool = False  # a new server process for every measurement (memory); never retried
    max_rounds: int = 1000  # RSS barely moves from round to round: fewer rounds will do
    order: tuple[str, ...] = ()  # the order of measurement within a round

    def size(self, quick: bool) -> int:
        return self.quick_connections if quick else self.connections

    def heading(self, quick: bool) -> str:
        """The title, with `{n}` replaced by the number of connections of this run."""
        return self.title.replace("{n}", f"{self.size(quick):,}")

    def servers(self, letters: set[str]) -> list[Server]:
        """The servers the chosen scenarios need, in `order`: each reference next to ours."""
        wanted = {key for letter in letters & set(self.needs) for key in self.needs[letter]}
        return [SERVERS[key] for key in self.order if key in wanted]


GROUPS = [
    Group("echo", "(a), (b), (n) echo with ack: 50 connections ping-ponging", "echo",
          {"a": ("ours", "raw", "raw-cold", "rawstr", "sio", "ours-uvloop"),
           "b": ("ours-redis", "ours-redis-own", "raw", "ours-redis-uvloop", "ours-workers2"),
           "n": ("ours", "ours-metrics", "raw")}, 50, 50,
          order=("ours", "ours-metrics", "raw", "ours-redis-own", "ours-redis", "ours-uvloop", "ours-redis-uvloop",
                 "ours-workers2", "raw-cold", "rawstr", "sio")),
    Group("fanout", "(c), (f) fan-out: one room of 1,000 sockets", "fanout",
          {"c": ("ours", "raw", "sio"), "f": ("ours-2proc", "ours", "raw", "ours-workers2")}, 1000, 200,
          order=("ours", "raw", "ours-2proc", "ours-workers2", "sio")),
    Group("handshake", "(d) handshakes: upgrade -> first frame -> close, 10 loops", "handshake",
          {"d": ("ours", "ours-fresh", "ours-redis", "ours-redis-own", "ours-info", "raw", "raw-session", "sio",
                 "ours-uvloop", "ours-redis-uvloop")}, 10, 10,
          order=("ours-fresh", "ours", "raw-session", "raw", "ours-redis", "ours-redis-own", "ours-uvloop",
                 "ours-redis-uvloop", "ours-info", "sio")),
    Group("idle", "(e) memory per idle authenticated connection", "idle",
          {"e": ("ours", "ours-redis", "raw-session", "raw", "sio")}, 5000, 500, fresh=True, max_rounds=3,
          order=("ours", "ours-redis", "raw-session", "raw", "sio")),
    # Storms are seconds long and barely drift: three rounds will do.
    Group("storm1k", "(g) storm: {n} simultaneous upgrades of one session, then all closed at once", "storm",
          {"g": ("ours", "ours-redis", "raw")}, 1000, 200, max_rounds=3, order=("ours", "raw", "ours-redis")),
    Group("storm5k", "(g) storm: {n} simultaneous upgrades of one session, then all closed at once", "storm",
          {"g": ("ours", "ours-redis", "raw")}, 5000, 500, max_rounds=3, order=("ours", "raw", "ours-redis")),
    # One run, not rounds (bench/faults.py); its size is in SoakSettings.
    Group("soak", "(h) soak: two processes on one Redis, a Redis restart and a killed process", "soak",
          {"h": ("ours-soak",)}, 1000, 1000, max_rounds=1),
    # Points (flood sizes, attacker sockets) measured in turns on one server each (bench/attacks.py).
    Group("logins", "(i) login flood: a bystander's echoes while 0, 16 and 64 clients fail to log in", "logins",
          {"i": ("ours", "ours-redis")}, 64, 64, max_rounds=3, order=("ours", "ours-redis")),
    Group("isolation", "(k) per-room channels: a room of {n} sockets busy on one of 4 processes", "fanout",
          {"k": ("ours-4proc",)}, 200, 100, max_rounds=3, order=("ours-4proc",)),
    Group("history", "(l) room history on and off: fan-out to one room of 1,000 sockets", "fanout",
          {"l": ("ours", "ours-nohist", "ours-redis", "ours-redis-nohist")}, 1000, 200,
          order=("ours", "ours-nohist", "ours-redis", "ours-redis-nohist")),
    Group("presence", "(m) presence: {n} users, each joining and leaving one room in a loop", "presence",
          {"m": ("ours-presence", "ours-nopresence", "ours-redis-presence", "ours-redis-nopresence")}, 50, 20,
          # fresh: the memory an earlier round freed would hide the new members
          fresh=True, max_rounds=3, order=("ours-presence", "ours-nopresence", "ours-redis-presence", "ours-redis-nopresence")),
    Group("frames", "(j) costly frames: a bystander's echoes while one user sends frames expensive to parse",
          "frames", {"j": ("ours", "ours-budgets")}, 20, 20, max_rounds=3, order=("ours", "ours-budgets")),
]
LETTERS = "abcdefghijklmn"
ATTACKS = ("logins", "frames")


@dataclass
class Options:
    letters: set[str]
    duration: float
    warmup: float
    rounds: int
    quick: bool
    retry_budget: float
    output: Path
    command: str
    env: dict[str, str]  # for the servers and load generators: SESSION_KEY
    soak: SoakSettings = field(default_factory=SoakSettings)
    best_speed: float = 0.0  # the fastest core_speed() seen in this run
    keep_from: Path | None = None  # an earlier run's results JSON: its groups this run does not measure
    kept: str = ""  # what RESULTS.md says of them


def start_server(procs: Processes, server: Server, redis_url: str | None, env: dict[str, str]) -> Running:
    children = []
    unset: tuple[str, ...] = ()
    if server.kind == "ours" and server.read_limits:
        unset = tuple(NO_READ_LIMITS)  # the server's own defaults, whatever our environment says
    elif server.kind == "ours":
        env = {**env, **NO_READ_LIMITS}
    if server.users:
        env = {**env, "DEMO_USERS": ",".join(f"{user_name(i)}:{USER_PASSWORD}" for i in range(1, server.users + 1))}
    for i in range(server.processes):
        port = free_port()
        children.append(procs.start(f"{server.key}{i}", server.command(port, redis_url),
                                    core=SERVER_CORE, env=env, port=port, unset=unset))
    for child in children:
        wait_http(child)
    workers: list[int] = []
    if server.workers > 1:  # measure the workers, not the supervisor that only watches them
        deadline = time.monotonic() + 30
        while len(workers := _children(children[0].pid)) < server.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.key}: {len(workers)} of {server.workers} workers started")
            time.sleep(0.1)
    return Running(server, children, workers)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def stop_server(procs: Processes, running: Running) -> None:
    for child in running.children:
        procs.stop(child)


def run_loadgen(group: Group, running: Running, opts: Options, redis: Child | None) -> dict[str, Any]:
    connections = group.size(opts.quick)
    cmd = [python(), "-m", "bench.loadgen", group.loadgen, "--proto", running.server.proto,
           "--connections", str(connections), "--duration", str(opts.duration), "--warmup", str(opts.warmup)]
    cmd += running.server.loadgen_args
    if group.loadgen == "idle":  # more than the default heartbeat (25 s): every socket is pinged in it
        cmd += ["--idle-window", "5" if opts.quick else "30"]
    for url in running.urls:
        cmd += ["--url", url]
    for pid in running.pids:
        cmd += ["--pid", str(pid)]
    if redis is not None and running.server.redis:
        cmd += ["--other-pid", f"redis={redis.pid}"]
        if group.loadgen == "presence":
            cmd += ["--redis-port", str(redis.port)]
    timeout = opts.warmup + opts.duration + 180
    try:
        done = subprocess.run(pinned(cmd, LOADGEN_CORE), cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **opts.env})
    except subprocess.TimeoutExpired:
        return {"error": f"the load generator did not finish within {timeout:g} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(group: Group, running: Running, opts: Options, redis: Child | None,
            log: Callable[[str], None]) -> dict[str, Any]:
    """One measurement; again (at most RETRIES times, while the run's retry budget lasts)
    when it failed, when the machine was busy with other work meanwhile, or when core 0 ran
    slow just before or after it. The best attempt is kept: not slow, least foreign load."""
    attempts = []
    while True:
        started = time.monotonic()
        wait_idle(running.pids)  # the probe must not compete with the server's own work
        before = core_speed(SERVER_CORE)
        result = run_loadgen(group, running, opts, redis)
        wait_idle(running.pids)  # e.g. closing the sockets the load generator left
        after = core_speed(SERVER_CORE)
        opts.best_speed = max(opts.best_speed, before, after)
        result["speed"] = min(before, after) / opts.best_speed
        attempts.append(result)
        if "error" not in result and result["foreign_util"] <= NOISY and result["speed"] >= SLOW:
            break
        if group.fresh or len(attempts) > RETRIES or opts.retry_budget <= 0 or not running.alive():
            break
        log(f"  {running.server.key}: {_brief(result)}: measuring again")
        time.sleep(1)
        opts.retry_budget -= time.monotonic() - started + 1
    ok = [r for r in attempts if "error" not in r]
    best = min(ok, key=lambda r: (r["speed"] < SLOW, r["foreign_util"])) if ok else attempts[-1]
    return {**best, "attempts": len(attempts)}


def run_group(group: Group, opts: Options, procs: Processes, redis: Child | None, redis_url: str | None,
              env: dict[str, str], log: Callable[[str], None]) -> dict[str, list[dict[str, Any]]]:
    servers = group.servers(opts.letters)
    results: dict[str, list[dict[str, Any]]] = {s.key: [] for s in servers}
    running: dict[str, Running] = {}
    try:
        if not group.fresh:
            running = {s.key: start_server(procs, s, redis_url, env) for s in servers}
        rounds = min(opts.rounds, group.max_rounds)
        for r in range(rounds):
            for server in servers:
                if group.fresh:
                    running[server.key] = start_server(procs, server, redis_url, env)
                elif not running[server.key].alive():  # it crashed: note it, start it again
                    log(f"  {server.key} died:\n{running[server.key].children[0].log_tail()}")
                    procs.keep_logs = True
                    running[server.key] = start_server(procs, server, redis_url, env)
                result = measure(group, running[server.key], opts, redis, log)
                results[server.key].append(result)
                if "error" in result:
                    procs.keep_logs = True
                log(f"  round {r + 1}/{rounds} {server.key:<11} {_brief(result)}")
                if group.fresh:
                    stop_server(procs, running.pop(server.key))
    finally:
        for item in running.values():
            stop_server(procs, item)
    return results


def run_attack(group: Group, opts: Options, procs: Processes, redis: Child | None, redis_url: str | None,
               env: dict[str, str], log: Callable[[str], None]) -> dict[str, list[dict[str, Any]]]:
    """(i) or (j): every point of the attack on each of its servers, in turns (bench/attacks.py)."""
    options = server_options(env)
    servers = group.servers(opts.letters)
    if not budgets_by_default(options):  # the defaults would be the same as no budgets
        servers = [s for s in servers if not s.read_limits]
    log(f"  largest frame {options['max_message_size']:,} bytes; default read budgets: "
        f"{options['rate_limit']} events/s, {options['rate_limit_bytes']} bytes/s per socket (None: no such option)")
    running = {s.key: start_server(procs, s, redis_url, env) for s in servers}

    def restart(old: Running) -> Running:
        stop_server(procs, old)
        return start_server(procs, old.server, redis_url, env)

    attacks = Attacks(opts, procs, SERVER_CORE, LOADGEN_CORE, NOISY, SLOW, RETRIES, log)
    try:
        return attacks.run(group.loadgen, running, restart, redis, options, min(opts.rounds, group.max_rounds))
    finally:
        for item in running.values():
            stop_server(procs, item)


def _brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return "ERROR " + result["error"]
    text = (f"{result['throughput']:10.0f} {result['unit']}/s  server CPU {_us(result['server_cpu_per_unit'])}"
            f"/{result['unit']}  util {result['server_util']:.2f}  loadgen {result['loadgen_util']:.2f}"
            f"  foreign {result['foreign_util']:.2f}  speed {result.get('speed', 1):.2f}")
    if "rss_per_connection" in result:
        text += f"  RSS {result['rss_per_connection'] / 1024:.1f} KB/conn"
    if result.get("idle_cpu_per_second") is not None:
        text += f"  idle CPU {result['idle_cpu_per_second'] * 1000:.1f} ms/s"
    if "storm_wall" in result:
        text += (f"  failed {result['failed']}/{result['connections']} {result['failures'] or ''}"
                 f" wall {result['storm_wall']:.2f} s  close {result['close']['wall']:.2f} s"
                 f" ({result['close']['failed']} failed)")
    return text


# -- figures ---------------------------------------------------------------------------


def _us(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f} ms"


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


@dataclass
class Summary:
    """Medians over the successful rounds of one server in one group."""

    runs: list[dict[str, Any]]
    ok: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.ok = [r for r in self.runs if "error" not in r]

    def median(self, getter: Callable[[dict[str, Any]], Any]) -> float | None:
        return _median([getter(r) for r in self.ok])

    @property
    def cpu(self) -> float | None:
        return self.median(lambda r: r["server_cpu_per_unit"])

    @property
    def errors(self) -> list[str]:
        return [r["error"] for r in self.runs if "error" in r]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _server_cpu(run: dict[str, Any]) -> float:
    return float(run["server_cpu_per_unit"] or 0.0)


def _with_redis_cpu(run: dict[str, Any]) -> float:
    """The server's CPU per unit plus redis-server's, when it was measured."""
    return _server_cpu(run) + float((run.get("other_cpu_per_unit") or {}).get("redis") or 0.0)


def _per_round_ratios(ours: Summary, ref: Summary, invert: bool = False,
                      cost: Callable[[dict[str, Any]], float] = _server_cpu) -> list[float]:
    pairs = []
    for a, b in zip(ours.runs, ref.runs):
        if "error" in a or "error" in b:
            continue
        x, y = cost(a), cost(b)
        if x and y:
            pairs.append(y / x if invert else x / y)
    return pairs


@dataclass
class Target:
    letter: str
    what: str
    figure: str
    reference: str
    ratio: float | None
    target: str
    passed: bool | None
    miss: str = ""
    rounds: list[float] = field(default_factory=list)


def targets(all_results: dict[str, dict[str, list[dict[str, Any]]]], letters: set[str]) -> list[Target]:
    out: list[Target] = []

    def get(group: str, key: str) -> Summary | None:
        runs = all_results.get(group, {}).get(key)
        return Summary(runs) if runs else None

    def cpu_target(letter: str, what: str, group: str, key: str, ref_key: str, ref_label: str,
                   limit: float, cost: Callable[[dict[str, Any]], float] = _server_cpu) -> None:
        ours, ref = get(group, key), get(group, ref_key)
        if ours is None or ref is None:
            return
        rounds = _per_round_ratios(ours, ref, cost=cost)
        ours_cpu, ref_cpu = ours.median(cost), ref.median(cost)
        ratio = _median(rounds) if rounds else _ratio(ours_cpu, ref_cpu)
        passed = None if ratio is None else ratio <= limit
        miss = "" if passed in (None, True) else f"by {(ratio / limit - 1) * 100:.0f}% (limit {limit:g}x)"
        unit = ours.ok[0]["unit"] if ours.ok else "unit"
        out.append(Target(letter, what, f"{_us(ours_cpu)}/{unit}", f"{ref_label}: {_us(ref_cpu)}/{unit}",
                          ratio, f"<= {limit:g}x", passed, miss, rounds))

    def comparison(letter: str, what: str, ours: Summary | None, ref: Summary | None, ref_label: str) -> None:
        """A figure with no target, beside a reference of ours: the ratio of CPU per unit."""
        if not ours or not ref:
            return
        rounds = _per_round_ratios(ours, ref)
        unit = ours.ok[0]["unit"] if ours.ok else "unit"
        out.append(Target(letter, what, f"{_us(ours.cpu)}/{unit}", f"{ref_label}: {_us(ref.cpu)}/{unit}",
                          _median(rounds) if rounds else _ratio(ours.cpu, ref.cpu), "(no target)", None,
                          rounds=rounds))

    def storm_target(group: str, key: str) -> None:
        ours, ref = get(group, key), get(group, "raw")
        if ours is None or not ours.ok:
            return
        n = ours.ok[0]["connections"]
        rounds = _per_round_ratios(ours, ref) if ref else []
        failed = sum(r["failed"] for r in ours.ok)
        passed = failed == 0 and not ours.errors
        out.append(Target("g", f"storm of {n:,} upgrades of one session, {SERVERS[key].label}: failed upgrades "
                               "(every round; the ratio is of server CPU per upgrade)",
                          _storm_figure(ours), "raw aiohttp: " + _storm_figure(ref) if ref else "-",
                          _median(rounds) if rounds else None, "0 failed", passed,
                          "" if passed else f"{failed} failed" + (", errors" if ours.errors else ""), rounds))

    if "a" in letters:
        cpu_target("a", "echo with ack, cookie storage, reload_session on", "echo", "ours", "raw",
                   "raw aiohttp JSON echo", 1.1)
    if "n" in letters:
        cpu_target("n", "echo with ack, cookie storage, run.py --metrics (issue 15)", "echo", "ours-metrics", "ours",
                   "ours without --metrics", 1.03)
    if "b" in letters:
        cpu_target("b", "echo with ack, Redis storage, one session for all sockets, reload before every message",
                   "echo", "ours-redis", "raw", "raw aiohttp JSON echo", 1.1)
        cpu_target("b", "echo with ack, Redis storage, a session per socket, reload before every message",
                   "echo", "ours-redis-own", "raw", "raw aiohttp JSON echo", 1.1)
        comparison("b", "echo, run.py --workers 2 on one port: CPU per message, both workers",
                   get("echo", "ours-workers2"), get("echo", "ours-redis"), "ours, Redis, one process")
    if "c" in letters:
        ours, ref = get("fanout", "ours"), get("fanout", "raw")
        if ours and ref:
            # Deliveries per second of server CPU: 1 / CPU per delivery.
            rounds = _per_round_ratios(ours, ref, invert=True)
            ratio = _median(rounds) if rounds else _ratio(ref.cpu, ours.cpu)
            passed = None if ratio is None else ratio >= 0.8
            miss = "" if passed in (None, True) else f"by {(1 - ratio / 0.8) * 100:.0f}% (limit 0.8x)"
            out.append(Target("c", "fan-out to 1,000 sockets: deliveries per second of server CPU",
                              f"{1 / ours.cpu:,.0f}/s ({_us(ours.cpu)}/delivery)" if ours.cpu else "-",
                              f"raw send_str loop: {1 / ref.cpu:,.0f}/s ({_us(ref.cpu)}/delivery)" if ref.cpu else "-",
                              ratio, ">= 0.8x", passed, miss, rounds))
    if "d" in letters:
        cpu_target("d", "handshake, cookie storage", "handshake", "ours", "raw-session",
                   "aiohttp + aiohttp-session upgrade + 1 frame + close", 1.15)
        cpu_target("d", "handshake, cookie storage, against raw aiohttp", "handshake", "ours", "raw",
                   "raw upgrade + 1 frame + close", 1.5)
        cpu_target("d", "handshake, cookie storage, a new cookie each time (no cache hits)", "handshake",
                   "ours-fresh", "raw", "raw upgrade + 1 frame + close", 1.5)
        for key, what in (("ours-redis", "one session"), ("ours-redis-own", "a session per loop")):
            cpu_target("d", f"handshake, Redis storage ({what}), server + redis-server CPU", "handshake", key,
                       "ours", "our cookie handshake", 1.3, cost=_with_redis_cpu)
    if "e" in letters:
        ref = get("idle", "raw-session") or get("idle", "raw")
        ref_label = "aiohttp + aiohttp-session" if get("idle", "raw-session") else "raw aiohttp"
        for key, storage in (("ours", "cookie"), ("ours-redis", "Redis")):
            ours = get("idle", key)
            if not ours:
                continue
            rss = ours.median(lambda r: r["rss_per_connection"])
            ref_rss = ref.median(lambda r: r["rss_per_connection"]) if ref else None
            passed = None if rss is None else rss <= 16 * 1024
            miss = "" if passed in (None, True) else f"by {(rss / (16 * 1024) - 1) * 100:.0f}% (limit 16 KB)"
            n = ours.ok[0].get("connections", 5000) if ours.ok else 5000
            out.append(Target("e", f"RSS per idle authenticated connection ({n:,} connections), {storage} storage",
                              f"{rss / 1024:.1f} KB" if rss is not None else "-",
                              f"{ref_label}: {ref_rss / 1024:.1f} KB" if ref_rss is not None else "-",
                              _ratio(rss, ref_rss), "<= 16 KB", passed, miss))
            idle = ours.median(lambda r: r.get("idle_cpu_per_second"))
            ref_idle = ref.median(lambda r: r.get("idle_cpu_per_second")) if ref else None
            if idle is not None:
                out.append(Target("e", f"server CPU while the {n:,} sockets stay idle (heartbeat 25 s), "
                                       f"{storage} storage", f"{idle * 1000:.1f} ms/s",
                                  f"{ref_label}: {ref_idle * 1000:.1f} ms/s" if ref_idle is not None else "-",
                                  _ratio(idle, ref_idle), "(no target)", None))
    if "f" in letters:
        one = get("fanout", "ours")
        comparison("f", "fan-out across 2 processes through Redis: CPU per delivery, both processes",
                   get("fanout", "ours-2proc"), one, "ours, one process (c)")
        comparison("f", "fan-out, run.py --workers 2 on one port: CPU per delivery, both workers",
                   get("fanout", "ours-workers2"), one, "ours, one process (c)")
    if "k" in letters:
        four = get("isolation", "ours-4proc")
        if four and four.ok:
            def by_pid(run: dict[str, Any]) -> list[float]:
                return [v or 0.0 for v in run["server_cpu_per_message_by_pid"].values()]
            receiver = _median([by_pid(r)[0] for r in four.ok])
            others = [_median([by_pid(r)[i] for r in four.ok]) for i in (1, 2, 3)]
            worst = max(o or 0.0 for o in others)
            ratio = _ratio(worst, receiver)
            passed = None if ratio is None else ratio <= 0.02
            out.append(Target("k", "a busy room on one of 4 processes: CPU per message of each of the other three "
                                   "(50 sockets each, in another room), beside the receiver's",
                              ", ".join(_us(o) for o in others), f"the receiver (200 members): {_us(receiver)}",
                              ratio, "<= 0.02x", passed,
                              "" if passed in (None, True) else f"the busiest other spent {ratio:.1%}"))
    if "l" in letters:
        for key, off, storage in (("ours", "ours-nohist", "cookie"), ("ours-redis", "ours-redis-nohist", "Redis")):
            cpu_target("l", f"fan-out to 1,000 sockets with room history (100 events), {storage} storage: "
                            "server CPU per delivery", "history", key, off, "the same, --history-size 0", 1.25)
    if "m" in letters:
        for on, off, storage in (("ours-presence", "ours-nopresence", "cookie"),
                                 ("ours-redis-presence", "ours-redis-nopresence", "Redis")):
            cost = _with_redis_cpu if storage == "Redis" else _server_cpu
            with_, without = get("presence", on), get("presence", off)
            if not with_ or not without:
                continue
            rounds = _per_round_ratios(with_, without, cost=cost)
            what = "server" + (" + redis-server" if storage == "Redis" else "")
            out.append(Target("m", f"a join and a leave with presence, {storage} storage: {what} CPU",
                              f"{_us(with_.median(cost))}/join+leave",
                              f"--presence off: {_us(without.median(cost))}/join+leave",
                              _median(rounds) if rounds else None, "(no target)", None, rounds=rounds))
            member = with_.median(lambda r: r["rss_per_member"])
            bare = without.median(lambda r: r["rss_per_member"])
            redis_member = with_.median(lambda r: r.get("redis_per_member"))
            redis_bare = without.median(lambda r: r.get("redis_per_member"))
            figure = f"{member:.0f} B" if member is not None else "-"
            if redis_member is not None:
                figure += f"; Redis {redis_member:.0f} B"
            reference = f"--presence off: {bare:.0f} B" if bare is not None else "-"
            if redis_bare is not None:
                reference += f"; Redis {redis_bare:.0f} B"
            out.append(Target("m", f"memory per member (a user in a room; {with_.ok[0]['members']:,} of them), "
                                   f"{storage} storage: server RSS", figure, reference, None, "(no target)", None))
    if "g" in letters:
        for group in (g for g in GROUPS if g.loadgen == "storm"):
            for key in ("ours", "ours-redis"):
                storm_target(group.name, key)
    if "h" in letters:
        out += [Target(*row) for row in soak_targets(all_results.get("soak", {}).get("ours-soak", []))]
    labels = {key: server.label for key, server in SERVERS.items()}
    for letter, kind in (("i", "logins"), ("j", "frames")):
        if letter in letters:
            out += [Target(*row) for row in attack_targets(kind, all_results.get(kind, {}), labels)]
    return out


# -- RESULTS.md ------------------------------------------------------------------------


ISSUE_ESTIMATES = {  # issue 5, item 4: what the references cost "on this machine"
    ("echo", "raw"): "22 us/message", ("echo", "rawstr"): "13 us/message", ("echo", "sio"): "100 us/message",
    ("fanout", "raw"): "5 us/delivery", ("fanout", "sio"): "46 us/delivery",
    ("handshake", "raw"): "0.19 ms", ("handshake", "sio"): "0.75 ms",
    ("idle", "raw"): "13 KB", ("idle", "sio"): "30 KB",
}


def machine() -> dict[str, str]:
    model = "unknown"
    mhz = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("cpu MHz"):
                mhz.append(line.split(":", 1)[1].strip())
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {"cpu": model, "nproc": nproc, "mhz": ", ".join(mhz), "memory": mem,
            "kernel": f"{platform.system()} {platform.release()}"}


def versions() -> dict[str, str]:
    out = {"Python": platform.python_version()}
    for name in ("aiohttp", "aiohttp-session", "python-socketio", "python-engineio", "redis", "hiredis",
                 "orjson", "uvloop"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        out["redis-server"] = subprocess.run(["redis-server", "--version"], capture_output=True,
                                             text=True).stdout.split()[2].removeprefix("v=")
    except (OSError, IndexError):
        out["redis-server"] = "not installed"
    return out


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "server", "run.py"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    if not head:
        return "not a git checkout"
    return head + (" with uncommitted changes in server/ or run.py" if dirty else " (server/ as committed)")


def code_fingerprint() -> str:
    """A hash of the server's code (server/ and run.py), to notice a change during a run."""
    digest = hashlib.sha1()
    for path in sorted([*(ROOT / "server").rglob("*.py"), ROOT / "run.py"]):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def render(all_results: dict[str, dict[str, list[dict[str, Any]]]], opts: Options, started: datetime.datetime,
           finished: datetime.datetime, code: tuple[str, str, str]) -> str:
    m, v = machine(), versions()
    found = targets(all_results, opts.letters)
    lines = ["# Benchmark results", ""]
    if opts.quick:
        lines += ["**QUICK SMOKE RUN (`--quick`): short windows, one round, fewer sockets; "
                  "these figures only show that every scenario runs.**", ""]
    lines += [
        f"* Date: {started:%Y-%m-%d %H:%M} UTC ({(finished - started).total_seconds() / 60:.1f} minutes)",
        f"* Command: `{opts.command}`",
        *([f"* Kept from an earlier run: {opts.kept}"] if opts.kept else []),
        f"* Machine: {m['cpu']}, nproc {m['nproc']}, {m['memory']}, {m['kernel']}"
        + (f"; cpu MHz {m['mhz']}" if m["mhz"] else ""),
        "* Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"* Code: {code[0]}; server/ and run.py fingerprint {code[1]}"
        + ("" if code[1] == code[2] else f" at the start, {code[2]} at the end: **the server's code changed "
           "during the run, so scenarios measured in different groups may have run different code**"),
        f"* Method: every server is its own process pinned to core {SERVER_CORE}"
        + ("" if can_pin() else " (NOT pinned: taskset or a second core is missing)")
        + f"; the load generator (aiohttp's client, uvloop when installed) is pinned to core {LOADGEN_CORE}, "
        f"and so is the private redis-server. {opts.rounds} round(s) ((e), (g), (i), (j): at most 3; (h) is one run), "
        "each server measured in "
        f"turn in each round; a {opts.warmup:g} s warm-up, then a {opts.duration:g} s window. Figures are medians over "
        "the rounds. Server CPU = utime + stime from /proc/PID/stat over the window; "
        "ratios are computed from server CPU time per unit. The machine is shared: a measurement during "
        f"which other processes kept more than {NOISY:g} of a core busy, or after or before which core 0 ran "
        f"slower than {SLOW:g} of its best speed, was taken again (at most {RETRIES} "
        "times, within a retry budget for the whole run; the quietest attempt is kept; (e) is not "
        "retried).",
        "",
        "## Targets (issues 5, 8, 11, 12 and 15)",
        "",
        "Ours and the reference are medians over the rounds; the ratio is the median of the per-round ratios "
        "(each pairs two measurements taken one after the other, which drift least), so it need not equal "
        "ours / reference exactly.",
        "",
        "| | scenario | ours | reference (same run) | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in found:
        result = "-" if t.passed is None else ("PASS" if t.passed else f"MISS {t.miss}")
        ratio = "-" if t.ratio is None else f"{t.ratio:.2f}x"
        lines.append(f"| ({t.letter}) | {t.what} | {t.figure} | {t.reference} | {ratio} | {t.target} | {result} |")
    lines += ["", "Per-round ratios (ours / reference, measured one after the other; (c): deliveries per CPU "
              "second, ours / raw):", ""]
    for t in found:
        if t.rounds:
            lines.append(f"* ({t.letter}) {t.what}: " + ", ".join(f"{x:.2f}" for x in t.rounds))
    for group in GROUPS:
        results = all_results.get(group.name)
        if not results:
            continue
        lines += ["", f"## {group.heading(opts.quick)}", ""]
        if group.loadgen == "soak":
            lines += soak_section(results["ours-soak"][0])
        elif group.loadgen == "logins":
            lines += logins_section(results, {key: server.label for key, server in SERVERS.items()})
        elif group.loadgen == "frames":
            lines += frames_section(results, {key: server.label for key, server in SERVERS.items()})
        elif group.loadgen == "storm":
            lines += _storm_table(results)
        else:
            lines += _group_table(group, results)
    lines += [
        "",
        "## Reading the columns",
        "",
        "* **throughput**: units per second of wall time in the window. The load generator is one Python "
        "process on one core, so this is often its limit, not the server's: compare servers by **server "
        "CPU/unit**.",
        "* **server util**: server CPU seconds per wall second (1.00 = its core is saturated). A server "
        "that is not saturated pays its event-loop wake-ups over fewer messages, so its CPU per unit is "
        "somewhat higher than at saturation.",
        "* **loadgen util**, **foreign**: the load generator's CPU, and everything else the machine did "
        "in the window (other users of this shared machine, and loopback softirq time), in cores. A high "
        "foreign figure marks a noisy round; the medians over interleaved rounds are there for that.",
        "* **speed**: how fast core 0 ran a fixed pure-Python loop just before and after the measurement "
        "(the slower of the two), relative to the fastest probe of the run (a maximum of noisy probes: "
        "about 0.75 is normal). The host of this virtual machine slows it down at times, to about half, "
        f"without any steal time to show for it; below {SLOW:g} a measurement was taken again.",
        "* **latency** (p50/p99): echo: request -> ack; fan-out: send -> every delivery and the ack; "
        "handshake: upgrade -> first frame -> close.",
        "* **Redis CPU/unit**: the private redis-server's CPU per unit (not included in the server's).",
        "* Issue estimate: what issue 5 says the reference costs on this kind of machine.",
        "",
        "## Notes",
        "",
        "* **Allocator.** asyncio reads each socket into a fresh 256 KiB bytes object. Until the process has "
        "freed one large mmapped block, glibc's malloc serves that size with mmap and gives it back with "
        "mremap + munmap: three syscalls, about 10 us of kernel time per frame on this machine. Our server "
        "leaves that state at start (it frees a 16 MiB block on purpose, and glibc then raises its "
        "mmap threshold); the reference servers do the same (`warm_allocator()` in "
        "bench/raw_server.py), so that no side is charged for the accident. The `cold allocator` row "
        "shows the raw reference without it.",
        "* **Logging.** Our server runs with `--log-level warning` (the references log nothing); `python run.py` "
        "defaults to `info`, which logs every connect and disconnect: the `default --log-level info` row "
        "of (d) shows what that costs per handshake.",
        "* **(d)** as issue 5 words it reuses one login cookie for every upgrade, so a server that remembers "
        "decrypted cookies (ours does) answers it from that cache. The `new cookie for every handshake` row "
        "measures the other case, distinct browsers: the load generator decrypts the login cookie once with "
        "SESSION_KEY and encrypts it again for each upgrade (same session, bytes never seen before).",
        "* **(f)** runs both of our processes on core 0 (their CPU is added up), the sender's socket on the "
        "first; the private redis-server runs on core 1 with the load generator.",
        "* **(e)** starts a fresh server for each measurement: RSS is read after 20 warm-up connections and "
        "again once the N connections have been idle for 2 s; the delta is divided by N.",
        *_storm_notes(),
        *soak_notes(),
        *attack_notes(),
        "* **Read budgets.** Every `python run.py` of the bench runs with RATE_LIMIT=0 and RATE_LIMIT_BYTES=0 "
        "in its environment (no read budgets), but the `default read budgets` server of (j): the defaults cap "
        "how fast one user's sockets are read (events and bytes a second), and the throughput scenarios drive "
        "one user's 50 sockets at tens of thousands of events a second. The benchmarks measure the server's "
        "cost per unit of work, not its limits; (j) measures the limits.",
        "",
        "Raw per-run figures are in the JSON file of the same name next to this one (bench/RESULTS.json, "
        "committed; the charts are drawn from it, and `python -m bench.charts` draws them again), and in "
        "`bench/results-*.json` (one per run, not committed).",
        "",
    ]
    return "\n".join(lines)


def _group_table(group: Group, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    idle = group.loadgen == "idle"
    head = ["server", "throughput", "p50", "p99", "server CPU/unit", "server util", "loadgen util", "foreign",
            "speed"]
    if idle:
        head = ["server", "RSS/connection", "RSS before", "RSS after", "server CPU/connection", "connect rate",
                "idle CPU (ms/s)"]
    if any(SERVERS[k].redis for k in results):
        head.append("Redis CPU/unit")
    head += ["issue estimate", "rounds ok", "per round (server CPU/unit)"]
    rows = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for key, runs in results.items():
        s = Summary(runs)
        unit = s.ok[0]["unit"] if s.ok else "unit"
        label = SERVERS[key].label
        if idle:
            rss = s.median(lambda r: r["rss_per_connection"])
            cells = [label, "-" if rss is None else f"{rss / 1024:.1f} KB",
                     _mib(s.median(lambda r: r["rss_before"])), _mib(s.median(lambda r: r["rss_after"])),
                     _us(s.cpu), _rate(s.median(lambda r: r["throughput"]), "conn"),
                     _fmt(s.median(lambda r: (r.get("idle_cpu_per_second") or 0) * 1000))]
        else:
            cells = [label, _rate(s.median(lambda r: r["throughput"]), unit),
                     _ms(s.median(lambda r: r["latency"].get("p50"))),
                     _ms(s.median(lambda r: r["latency"].get("p99"))),
                     f"{_us(s.cpu)}/{unit}",
                     _fmt(s.median(lambda r: r["server_util"])), _fmt(s.median(lambda r: r["loadgen_util"])),
                     _fmt(s.median(lambda r: r["foreign_util"])), _fmt(s.median(lambda r: r.get("speed")))]
        if any(SERVERS[k].redis for k in results):
            cells.append(_us(s.median(lambda r: r["other_cpu_per_unit"].get("redis"))) if SERVERS[key].redis
                         else "-")
        cells += [ISSUE_ESTIMATES.get((group.name, key), "-"), f"{len(s.ok)}/{len(s.runs)}",
                  ", ".join(_us(r["server_cpu_per_unit"]) if "error" not in r else "error" for r in runs)]
        rows.append("| " + " | ".join(cells) + " |")
    errors = [(key, e) for key, runs in results.items() for e in Summary(runs).errors]
    for key, error in errors:
        rows.append(f"\n* {key} error: `{error}`")
    return rows


def _storm_figure(s: Summary) -> str:
    failed = sum(r["failed"] for r in s.ok)
    total = sum(r["connections"] for r in s.ok)
    wall = s.median(lambda r: r["storm_wall"])
    p99 = s.median(lambda r: r["latency"].get("p99"))
    return (f"{failed} of {total:,} failed; wall {wall:.2f} s, p99 {p99:.2f} s" if wall is not None and p99
            else f"{failed} of {total:,} failed")


def _storm_table(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One row per server: medians over the rounds, failures summed over them."""
    head = ["server", "upgrades ok / failed (all rounds)", "failures", "wall, all first frames", "p50", "p99",
            "upgrades/s", "server CPU", "server CPU/upgrade", "Redis CPU", "close all: wall", "close: not answered",
            "close: server CPU", "listen overflows / SYN retransmits", "loadgen util", "foreign", "rounds ok",
            "per round (wall; failed)"]
    rows = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for key, runs in results.items():
        s = Summary(runs)
        failures: dict[str, int] = {}
        for r in s.ok:
            for cause, count in r["failures"].items():
                failures[cause] = failures.get(cause, 0) + count
        redis = s.median(lambda r: r["other_cpu"].get("redis"))
        tcp = [(r["tcp"].get("ListenOverflows", 0), r["tcp"].get("TCPSynRetrans", 0)) for r in s.ok if r.get("tcp")]
        cells = [
            SERVERS[key].label,
            f"{sum(r['ok'] for r in s.ok):,} / {sum(r['failed'] for r in s.ok):,}",
            ", ".join(f"{cause}: {count}" for cause, count in sorted(failures.items())) or "none",
            _seconds(s.median(lambda r: r["storm_wall"])),
            _seconds(s.median(lambda r: r["latency"].get("p50"))),
            _seconds(s.median(lambda r: r["latency"].get("p99"))),
            _rate(s.median(lambda r: r["throughput"]), "upgrade"),
            _seconds(s.median(lambda r: r["server_cpu"])),
            _us(s.cpu),
            "-" if redis is None else _seconds(redis),
            _seconds(s.median(lambda r: r["close"]["wall"])),
            str(sum(r["close"]["failed"] for r in s.ok)),
            _seconds(s.median(lambda r: r["close"]["server_cpu"])),
            " ".join(f"{o}/{r}" for o, r in tcp) or "-",
            _fmt(s.median(lambda r: r["loadgen_util"])),
            _fmt(s.median(lambda r: r["foreign_util"])),
            f"{len(s.ok)}/{len(s.runs)}",
            ", ".join(f"{r['storm_wall']:.2f} s; {r['failed']}" if "error" not in r else "error" for r in runs),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    for key, runs in results.items():
        for error in Summary(runs).errors:
            rows.append(f"\n* {key} error: `{error}`")
    return rows


def _storm_notes() -> list[str]:
    try:
        somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    except OSError:
        somaxconn = "unknown"
    return [
        "* **(g)** logs in once, then opens N websockets with that one session cookie at the same moment "
        "(`asyncio.gather` of `ws_connect` + reading the first frame, over a `TCPConnector(limit=0)`: "
        "aiohttp's default limit of 100 connections would serialize the storm). A socket's latency runs "
        "from the start of the storm to its first frame; the wall time is until the last first frame. An "
        "upgrade fails on any HTTP error (503 included), a close before the first frame, a connection "
        "error, or no first frame within 60 s. Server CPU runs from the start of the storm until the "
        "server is idle again (so it includes the work that follows the first frame). Then every socket is "
        "closed at once (closing handshakes); `not answered` counts closes the server did not answer "
        "within 30 s. Every server listens with a backlog of 4096 (run.py; bench/raw_server.py does the "
        f"same for the reference), which the kernel caps at net.core.somaxconn ({somaxconn} here); every "
        f"process may open {resource.getrlimit(resource.RLIMIT_NOFILE)[0]:,} files (raise_open_files() in "
        "bench/processes.py: the soft limit raised to the hard one, inherited by every child); the listen-overflow and "
        "SYN-retransmit counts are the machine's TCP counters over the storm (a retransmitted SYN costs "
        "the client a second or more), so other users of the machine can add to them. The load "
        "generator is one Python process: its own CPU is part of the wall time (`loadgen util`).",
    ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _rate(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:,.0f} {unit}/s"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024 / 1024:.1f} MiB"


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    from cryptography.fernet import Fernet  # a dependency of the server
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Scenarios: a echo (cookie), b echo (Redis), c fan-out, d handshakes, "
                                       "e memory per idle connection, f fan-out over two processes, "
                                       "g upgrade storm, h soak with faults (two processes, Redis restart, "
                                       "a killed process), i login flood beside a bystander's socket, "
                                       "j costly frames beside a bystander's socket, l fan-out with room history on and off, "
                                       "m presence on and off (CPU per join+leave, memory per member), "
                                       "n echo with and without run.py --metrics.")
    p.add_argument("--quick", action="store_true", help="short runs, one round, fewer sockets: a smoke check")
    p.add_argument("--scenarios", default=",".join(LETTERS), help="comma-separated letters (default: all)")
    p.add_argument("--duration", type=float, help="seconds in each measured window (default 3; quick: 1)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before each window (default 1; quick: 0.5)")
    p.add_argument("--rounds", type=int, help="rounds of interleaved measurements (default 5; quick: 1)")
    p.add_argument("--retry-budget", type=float,
                   help="seconds that re-measuring noisy rounds may take in all (default 150; quick: 20)")
    p.add_argument("--output", type=Path, help="default bench/RESULTS.md (quick: bench/RESULTS-quick.md)")
    p.add_argument("--keep-from", type=Path, metavar="JSON",
                   help="an earlier run's bench/results-*.json: its scenario groups that this run does not "
                        "measure are kept in RESULTS.md (which says so), e.g. to measure again what failed")
    p.add_argument("--soak-duration", type=float, help="(h): seconds of chat (default 180; quick: 20)")
    p.add_argument("--soak-rate", type=float, help="(h): chats per second, each to a room of about 50 "
                                                   "(default 200: about 10,000 deliveries per second)")
    args = p.parse_args(argv)
    letters = {x.strip().lower() for x in args.scenarios.split(",") if x.strip()}
    if not letters or not letters <= set(LETTERS):
        p.error(f"--scenarios takes letters among {','.join(LETTERS)}")
    quick = args.quick
    return Options(
        letters=letters,
        duration=args.duration or (1.0 if quick else 3.0),
        warmup=args.warmup if args.warmup is not None else (0.5 if quick else 1.0),
        rounds=args.rounds or (1 if quick else 5),
        quick=quick,
        retry_budget=args.retry_budget if args.retry_budget is not None else (20.0 if quick else 150.0),
        output=args.output or BENCH / ("RESULTS-quick.md" if quick else "RESULTS.md"),
        command=" ".join(["python -m bench", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        env={"SESSION_KEY": Fernet.generate_key().decode(), "PYTHONDONTWRITEBYTECODE": "1"},
        soak=SoakSettings(duration=args.soak_duration or (20.0 if quick else 180.0),
                          rate=args.soak_rate or SoakSettings.rate),
        keep_from=args.keep_from,
    )


def keep(all_results: dict[str, dict[str, list[dict[str, Any]]]], opts: Options) -> None:
    """Add the groups of `opts.keep_from` that this run did not measure."""
    assert opts.keep_from is not None
    earlier = json.loads(opts.keep_from.read_text())
    kept = [name for name in earlier["results"] if name not in all_results]
    for name in kept:
        all_results[name] = earlier["results"][name]
    opts.letters |= {letter for group in GROUPS if group.name in kept for letter in group.needs}
    opts.kept = (f"the groups {', '.join(kept)} come from `{earlier['command']}`, started {earlier['started'][:16]} "
                 f"UTC ({opts.keep_from.name}); the others were measured by this command")


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    limit = raise_open_files()  # inherited by every server and load generator
    if not can_pin():
        print("warning: cannot pin processes (taskset missing or a single core); figures will be noisier",
              file=sys.stderr)
    started = datetime.datetime.now(datetime.timezone.utc)

    def log(text: str) -> None:
        print(text, flush=True)

    env = opts.env
    groups = [g for g in GROUPS if opts.letters & set(g.needs)]
    state, fingerprint = git_state(), code_fingerprint()
    log(f"bench: scenarios {','.join(sorted(opts.letters))}, {opts.rounds} round(s), "
        f"{opts.duration:g} s windows, open files limit {limit}")
    all_results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    opts.best_speed = max(core_speed(SERVER_CORE) for _ in range(5))
    with Processes() as procs:
        redis, redis_url = None, None
        if any(s.redis for g in groups if g.loadgen != "soak" for s in g.servers(opts.letters)):
            redis, redis_url = start_redis(procs, LOADGEN_CORE)  # the soak starts a Redis of its own
        for group in groups:
            log(f"{group.heading(opts.quick)}")
            if group.loadgen == "soak":
                soak = SERVERS["ours-soak"]
                soaked = run_soak(opts.soak, procs, soak.command, env, SERVER_CORE, LOADGEN_CORE, log)
                all_results[group.name] = {soak.key: [soaked]}
                continue
            if group.loadgen in ATTACKS:
                all_results[group.name] = run_attack(group, opts, procs, redis, redis_url, env, log)
                continue
            all_results[group.name] = run_group(group, opts, procs, redis, redis_url, env, log)
    finished = datetime.datetime.now(datetime.timezone.utc)
    if opts.keep_from is not None:
        keep(all_results, opts)
    code = (state, fingerprint, code_fingerprint())
    if code[1] != code[2]:
        log("warning: server/ or run.py changed during the run")
    opts.output.write_text(render(all_results, opts, started, finished, code))
    raw = BENCH / f"results-{started:%Y%m%d-%H%M%S}.json"
    document = json.dumps({"command": opts.command, "started": started.isoformat(), "code": code[0],
                           "results": all_results}, indent=1) + "\n"
    raw.write_text(document)
    # The same beside the Markdown file (bench/RESULTS.json is committed): the charts can
    # be drawn again from it (`python -m bench.charts`).
    opts.output.with_suffix(".json").write_text(document)
    log(f"wrote {opts.output}, {opts.output.with_suffix('.json')} and {raw}")
    try:
        from bench.charts import charts_folder, draw, embed
        embed(opts.output, draw(all_results, charts_folder(opts.output)))
        log(f"drew the charts in {charts_folder(opts.output)}")
    except (ImportError, SystemExit) as exc:  # matplotlib missing: the figures are written all the same
        log(f"no charts: {exc}")
    for t in targets(all_results, opts.letters):
        result = "-" if t.passed is None else ("PASS" if t.passed else "MISS " + t.miss)
        ratio = "-" if t.ratio is None else f"{t.ratio:.2f}x"
        log(f"({t.letter}) {t.what}: {t.figure} vs {t.reference}: {ratio} ({t.target}) {result}")


if __name__ == "__main__":
    main()
