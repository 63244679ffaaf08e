"""The load generator: drives one server (or two) over aiohttp's websocket client and
prints one JSON object with the figures of the measured window.

    python -m bench.loadgen echo --proto ours --url http://127.0.0.1:8080 --pid 1234

Scenarios:

* `echo`: `--connections` sockets, each ping-ponging an event with an ack;
  unit: one message (request + ack).
* `fanout`: `--connections` sockets in room `lobby`, spread over the `--url`s; one of
  them (on the first url) sends `chat` and waits for every socket's delivery and its
  ack before sending the next; unit: one delivery.
* `handshake`: `--connections` loops of upgrade -> first frame -> close; unit: one handshake.
  With `--fresh-cookies` (cookie storage) each upgrade sends a cookie never seen before.
* `idle`: opens `--connections` sockets and leaves them idle; reports the RSS delta of
  the server per connection.
* `storm`: `--connections` upgrades of one logged-in session opened at the same moment
  (no cap on concurrent connections), each until its first frame, then all closed at
  once; unit: one upgrade. Failures are counted by cause, not raised.
* `presence`: `--connections` users (the server's DEMO_USERS `u01:bench`, ...; a login and a
  socket each) join and leave room `churn` in a loop, reading every frame (presence
  changes too); unit: one join + one leave. Before that, for memory, `--member-sockets`
  more sockets per user each join `--member-rooms` rooms of their own; reports the server's
  RSS (and with `--redis-port`, Redis's `used_memory`) per member added (a user in a room).

Protocols (`--proto`): `ours` (protocol v1 with a login cookie), `raw` (protocol v1
frames to bench/raw_server.py), `rawstr` (the same frames, echoed verbatim) and `sio`
(Engine.IO v4 / Socket.IO v5 spoken directly over the websocket).

The server's CPU time is utime + stime from /proc/PID/stat of every `--pid`, read at the
start and at the end of the measured window, which follows a warm-up. Every loop is
bounded by the window, and every wait by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import json
import math
import os
import time
from typing import Any, Awaitable, Callable

import aiohttp
import aiohttp.abc

from bench.processes import cpu_seconds, machine_cpu_seconds, raise_open_files, rss_bytes, tcp_counters

try:  # the load generator's own decoding cost does not count, but less of it is faster
    from orjson import loads
except ImportError:  # pragma: no cover
    from json import loads

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

LOGIN = {"username": "alice", "password": "wonderland"}
SIO_TOKEN = "bench-token"
WAIT = 30.0  # seconds: the longest any single reply or delivery may take
CHAT, ACK, OTHER = "chat", "ack", "other"


class ScenarioError(RuntimeError):
    pass


# -- protocols -------------------------------------------------------------------------


class V1:
    """Protocol v1 (protocol.md): our server, and raw_server.py in JSON mode."""

    name = "v1"
    path = "/ws"
    login = False

    async def setup(self, session: aiohttp.ClientSession, base: str) -> None:
        if not self.login:
            return
        async with session.post(base + "/api/login", json=LOGIN) as response:
            if response.status != 200:
                raise ScenarioError(f"login failed: {response.status} {await response.text()}")

    async def connect(self, session: aiohttp.ClientSession, base: str,
                      headers: dict[str, str] | None = None) -> aiohttp.ClientWebSocketResponse:
        ws = await session.ws_connect(base.replace("http", "ws", 1) + self.path, autoping=True, headers=headers,
                                      max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=WAIT))
        try:
            await self.opened(ws)
        except BaseException:
            await ws.close()
            raise
        return ws

    async def opened(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        first = loads(await recv_text(ws, self))
        if first.get("event") != "connected" or first["data"].get("user") is None:
            raise ScenarioError(f"expected an authenticated `connected` frame, got {first!r}")

    def is_ping(self, text: str) -> bool:
        return False

    def is_aside(self, text: str) -> bool:
        """A frame no scenario measures: the demo's presence changes, which its joins set off."""
        return False

    def echo(self, n: int, data: Any) -> str:
        return _dumps({"event": "echo", "data": data, "id": n})

    def check_echo(self, text: str, n: int, sent: str) -> None:
        frame = loads(text)
        if frame.get("ack") != n or "error" in frame:
            raise ScenarioError(f"expected the ack of {n}, got {text[:200]}")

    def join(self, n: int, room: str) -> str:
        return _dumps({"event": "join", "data": {"room": room}, "id": n})

    def chat(self, n: int, room: str, text: str) -> str:
        return _dumps({"event": "chat", "data": {"room": room, "text": text}, "id": n})

    def classify(self, text: str) -> tuple[str, Any]:
        frame = loads(text)
        if frame.get("event") == "chat":
            return CHAT, frame["data"]["text"]
        if "ack" in frame:
            if "error" in frame:
                raise ScenarioError(f"error ack: {text[:200]}")
            return ACK, frame["ack"]
        return OTHER, text


class Ours(V1):
    name = "ours"
    login = True

    def is_aside(self, text: str) -> bool:
        return text.startswith('{"event":"presence",')


class Raw(V1):
    name = "raw"


class RawStr(V1):
    """raw_server.py --mode str: the frame comes back verbatim."""

    name = "rawstr"

    def check_echo(self, text: str, n: int, sent: str) -> None:
        if text != sent:
            raise ScenarioError(f"expected the echo of {sent[:100]}, got {text[:200]}")


class SocketIO(V1):
    """Engine.IO v4 + Socket.IO v5 over a websocket, without the polling transport:
    open `0{...}`, connect `40{auth}` -> `40{"sid"}`, event `42["e",d]`, with an ack id
    `42N["e",d]` -> `43N[result]`, ping `2` -> pong `3`."""

    name = "sio"
    path = "/socket.io/?EIO=4&transport=websocket"

    async def opened(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        first = await recv_text(ws, self)
        if not first.startswith("0{"):
            raise ScenarioError(f"expected an Engine.IO open packet, got {first[:200]!r}")
        await ws.send_str("40" + _dumps({"token": SIO_TOKEN}))
        answer = await recv_text(ws, self)
        if not answer.startswith("40{"):
            raise ScenarioError(f"expected a Socket.IO connect answer, got {answer[:200]!r}")

    def is_ping(self, text: str) -> bool:
        return text == "2"

    def echo(self, n: int, data: Any) -> str:
        return f"42{n}" + _dumps(["echo", data])

    def check_echo(self, text: str, n: int, sent: str) -> None:
        if not text.startswith(f"43{n}["):
            raise ScenarioError(f"expected the ack of {n}, got {text[:200]}")

    def join(self, n: int, room: str) -> str:
        return f"42{n}" + _dumps(["join", {"room": room}])

    def chat(self, n: int, room: str, text: str) -> str:
        return f"42{n}" + _dumps(["chat", {"room": room, "text": text}])

    def classify(self, text: str) -> tuple[str, Any]:
        if text.startswith('42["chat",'):
            return CHAT, loads(text[2:])[1]["text"]
        if text.startswith("43"):
            return ACK, int(text[2:text.index("[")])
        return OTHER, text


PROTOCOLS: dict[str, type[V1]] = {"ours": Ours, "raw": Raw, "rawstr": RawStr, "sio": SocketIO}


async def recv_text(ws: aiohttp.ClientWebSocketResponse, proto: V1) -> str:
    """The next text frame, answering Engine.IO pings on the way."""
    while True:
        msg = await ws.receive(WAIT)  # a timeout of its own: no task per receive
        if msg.type is aiohttp.WSMsgType.TEXT:
            if proto.is_ping(msg.data):
                await ws.send_str("3")
                continue
            if proto.is_aside(msg.data):
                continue
            return msg.data
        raise ScenarioError(f"socket closed: {msg.type.name} code={ws.close_code} {msg.extra or ''}")


# -- measuring -------------------------------------------------------------------------


class Meter:
    """CPU seconds of the server processes (and of this process) over the measured window."""

    def __init__(self, pids: list[int], others: dict[str, int]) -> None:
        self.pids = pids
        self.others = others
        self.counting = False

    def _sample(self) -> tuple[float, dict[int, float], dict[str, float], float, tuple[float, float]]:
        own = os.times()
        return (time.perf_counter(), {p: cpu_seconds(p) for p in self.pids},
                {k: cpu_seconds(p) for k, p in self.others.items()}, own.user + own.system,
                machine_cpu_seconds())

    def start(self) -> None:
        self._start = self._sample()
        self.counting = True

    def stop(self) -> None:
        self.counting = False
        self._stop = self._sample()

    def figures(self, units: int, latencies: list[float] | None = None) -> dict[str, Any]:
        (t0, c0, o0, l0, m0), (t1, c1, o1, l1, m1) = self._start, self._stop
        wall = t1 - t0
        per_pid = {str(p): c1[p] - c0[p] for p in self.pids}
        cpu = sum(per_pid.values())
        others = {k: o1[k] - o0[k] for k in self.others}
        # Everything else the machine did meanwhile (other users' work: noise), roughly:
        # softirq time of loopback traffic is counted here too.
        foreign = (m1[0] - m0[0]) - cpu - sum(others.values()) - (l1 - l0)
        return {
            "units": units,
            "wall": wall,
            "throughput": units / wall if wall > 0 else 0.0,
            "server_cpu": cpu,
            "server_cpu_per_pid": per_pid,
            "server_cpu_per_unit": cpu / units if units else None,
            "server_util": cpu / wall if wall > 0 else 0.0,
            "other_cpu": others,
            "other_cpu_per_unit": {k: v / units if units else None for k, v in others.items()},
            "loadgen_util": (l1 - l0) / wall if wall > 0 else 0.0,
            "foreign_util": foreign / wall if wall > 0 else 0.0,
            "steal_util": (m1[1] - m0[1]) / wall if wall > 0 else 0.0,
            "latency": summarize(latencies or []),
        }


def summarize(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"n": 0}
    ordered = sorted(latencies)

    def rank(p: float) -> float:  # nearest-rank percentile
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return {"n": len(ordered), "p50": rank(0.50), "p99": rank(0.99), "mean": sum(ordered) / len(ordered),
            "max": ordered[-1]}


async def watch(tasks: list[asyncio.Task[Any]], seconds: float) -> None:
    """Sleep `seconds`, but raise at once the error of any task that failed meanwhile."""
    if not tasks:
        await asyncio.sleep(seconds)
        return
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def finish(tasks: list[asyncio.Task[Any]], timeout: float = WAIT) -> None:
    """Wait for tasks that are stopping by themselves; cancel what is left, re-raise errors."""
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def connect_many(count: int, connect: Callable[[int], Awaitable[aiohttp.ClientWebSocketResponse]],
                       concurrency: int = 50) -> list[aiohttp.ClientWebSocketResponse]:
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> aiohttp.ClientWebSocketResponse:
        async with limit:
            return await connect(i)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),  # sockets are not pooled: no cap on them
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # keep the login cookie of 127.0.0.1
        timeout=aiohttp.ClientTimeout(total=None, connect=WAIT, sock_read=None),
    )


async def own_sessions(proto: V1, base: str, count: int) -> list[dict[str, str]]:
    """Log in `count` times (a session each): the Cookie header of each login."""
    limit = asyncio.Semaphore(8)  # the demo hashes one password at a time and queues 32

    async def one(_: int) -> dict[str, str]:
        async with limit, client_session() as own:
            await proto.setup(own, base)
            return {"Cookie": "; ".join(f"{c.key}={c.value}" for c in own.cookie_jar)}

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def bare_session() -> aiohttp.ClientSession:
    """A client that sends only the cookies it is given."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar(),
                                 timeout=aiohttp.ClientTimeout(total=None, connect=WAIT, sock_read=None))


# -- scenarios -------------------------------------------------------------------------


async def echo(args: argparse.Namespace, proto: V1, meter: Meter) -> dict[str, Any]:
    base = args.url[0]
    async with client_session() as session, bare_session() as bare:
        if args.own_sessions:
            cookies = await own_sessions(proto, base, args.connections)
            sockets = await connect_many(args.connections, lambda i: proto.connect(bare, base, cookies[i]))
        else:
            await proto.setup(session, base)
            sockets = await connect_many(args.connections, lambda i: proto.connect(session, base))
        latencies: list[float] = []
        count = 0
        stopping = False

        async def ping_pong(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal count
            n = 0
            while not stopping:
                n += 1
                sent = proto.echo(n, {"text": "hello world", "seq": n})
                t = time.perf_counter()
                await ws.send_str(sent)
                text = await recv_text(ws, proto)
                dt = time.perf_counter() - t
                proto.check_echo(text, n, sent)
                if meter.counting:
                    count += 1
                    latencies.append(dt)

        tasks = [asyncio.create_task(ping_pong(ws)) for ws in sockets]
        await watch(tasks, args.warmup)
        meter.start()
        await watch(tasks, args.duration)
        meter.stop()
        stopping = True
        units = count
        await finish(tasks)
        await asyncio.gather(*(ws.close() for ws in sockets))
    return {**meter.figures(units, latencies), "unit": "message", "connections": args.connections,
            "own_sessions": args.own_sessions}


async def fanout(args: argparse.Namespace, proto: V1, meter: Meter) -> dict[str, Any]:
    bases, room, n = args.url, "lobby", args.connections
    async with client_session() as session:
        await proto.setup(session, bases[0])
        # Socket i goes to server i % len(bases): the sender, socket 0, to the first one.
        # With --room-on-first every member is on the first server, and the others hold
        # --bystanders sockets each, in another room: what do they spend on this room?
        spread = 1 if args.room_on_first else len(bases)
        sockets = await connect_many(n, lambda i: proto.connect(session, bases[i % spread]))
        bystanders = await connect_many(args.bystanders * (len(bases) - 1),
                                        lambda i: proto.connect(session, bases[1 + i % (len(bases) - 1)])) \
            if args.room_on_first and len(bases) > 1 else []

        async def join(ws: aiohttp.ClientWebSocketResponse) -> None:
            await ws.send_str(proto.join(1, room))
            kind, ident = proto.classify(await recv_text(ws, proto))
            if (kind, ident) != (ACK, 1):
                raise ScenarioError(f"expected the ack of join, got {kind} {ident}")

        limit = asyncio.Semaphore(50)

        async def join_limited(ws: aiohttp.ClientWebSocketResponse) -> None:
            async with limit:
                await join(ws)

        await asyncio.gather(*(join_limited(ws) for ws in sockets))
        for ws in bystanders:
            await ws.send_str(proto.join(1, "elsewhere"))
            if proto.classify(await recv_text(ws, proto)) != (ACK, 1):
                raise ScenarioError("a bystander's join was not acked")

        delivered = 0
        target = 0
        all_delivered = asyncio.Event()
        acked = asyncio.Event()
        sender = sockets[0]
        expected_ack = 0

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal delivered
            while True:
                kind, ident = proto.classify(await recv_text(ws, proto))
                if kind == CHAT:
                    delivered += 1
                    if delivered >= target:
                        all_delivered.set()
                elif kind == ACK and ws is sender and ident == expected_ack:
                    acked.set()
                else:
                    raise ScenarioError(f"unexpected frame in the fan-out: {kind} {ident}")

        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        latencies: list[float] = []
        messages = 0
        stopping = False

        async def send() -> None:
            nonlocal target, expected_ack, messages
            k = 0
            while not stopping:
                k += 1
                target = k * n  # every socket, the sender included, gets every message
                expected_ack = k + 1  # id 1 was the join
                all_delivered.clear()
                acked.clear()
                t = time.perf_counter()
                await sender.send_str(proto.chat(k + 1, room, f"m{k}"))
                try:
                    await asyncio.wait_for(asyncio.gather(all_delivered.wait(), acked.wait()), WAIT)
                except asyncio.TimeoutError:
                    raise ScenarioError(f"message {k}: {delivered - (k - 1) * n} of {n} deliveries "
                                        f"within {WAIT:g} s, ack {'seen' if acked.is_set() else 'missing'}")
                if meter.counting:
                    messages += 1
                    latencies.append(time.perf_counter() - t)

        sending = asyncio.create_task(send())
        await watch(readers + [sending], args.warmup)
        meter.start()
        first = delivered
        await watch(readers + [sending], args.duration)
        meter.stop()
        units = delivered - first
        stopping = True
        await finish([sending])
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for ws in bystanders:
            await ws.close()
    # Closing 1,000 sockets one handshake at a time takes long: leaving the session aborts them.
    figures = meter.figures(units, latencies)
    figures["server_cpu_per_message_by_pid"] = {
        pid: cpu / messages if messages else None for pid, cpu in figures["server_cpu_per_pid"].items()}
    return {**figures, "unit": "delivery", "connections": n, "messages": messages, "servers": len(bases),
            "room_on_first": args.room_on_first, "bystanders": len(bystanders),
            "latency_of": "send -> all deliveries and the ack"}


class FreshCookies:
    """A new cookie for every handshake, with the content of the login's session cookie.

    The cookie storage's cookie is a Fernet token under SESSION_KEY (the key the runner
    gives the server): decrypted once and encrypted again per handshake, it names the same
    session with new bytes, so no cache of decrypted cookies in the server can answer it.
    """

    def __init__(self, jar: aiohttp.abc.AbstractCookieJar, cookie_name: str = "session") -> None:
        from cryptography.fernet import Fernet

        key = os.environ.get("SESSION_KEY")
        if not key:
            raise ScenarioError("--fresh-cookies needs SESSION_KEY, the server's cookie key, in the environment")
        values = [c.value for c in jar if c.key == cookie_name]
        if not values:
            raise ScenarioError(f"no {cookie_name!r} cookie after the login")
        self._fernet = Fernet(key)
        self._name = cookie_name
        self._plain = self._fernet.decrypt(values[0].encode())

    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{self._name}={self._fernet.encrypt(self._plain).decode()}"}


async def handshake(args: argparse.Namespace, proto: V1, meter: Meter) -> dict[str, Any]:
    base = args.url[0]
    async with client_session() as session, bare_session() as bare:
        await proto.setup(session, base)
        fresh = FreshCookies(session.cookie_jar) if args.fresh_cookies else None
        cookies = await own_sessions(proto, base, args.connections) if args.own_sessions else None
        latencies: list[float] = []
        count = 0
        stopping = False

        async def loop(i: int) -> None:
            nonlocal count
            while not stopping:
                headers = fresh.headers() if fresh else None  # made before the clock starts
                t = time.perf_counter()
                if fresh:
                    ws = await proto.connect(bare, base, headers)
                elif cookies:
                    ws = await proto.connect(bare, base, cookies[i])
                else:
                    ws = await proto.connect(session, base)
                await ws.close()
                dt = time.perf_counter() - t
                if meter.counting:
                    count += 1
                    latencies.append(dt)

        tasks = [asyncio.create_task(loop(i)) for i in range(args.connections)]
        await watch(tasks, args.warmup)
        meter.start()
        await watch(tasks, args.duration)
        meter.stop()
        stopping = True
        units = count
        await finish(tasks)
    return {**meter.figures(units, latencies), "unit": "handshake", "concurrency": args.connections,
            "fresh_cookies": args.fresh_cookies, "own_sessions": args.own_sessions,
            "latency_of": "upgrade -> first frame -> close"}


async def idle(args: argparse.Namespace, proto: V1, meter: Meter) -> dict[str, Any]:
    base, pid, n = args.url[0], args.pid[0], args.connections
    async with client_session() as session:
        await proto.setup(session, base)
        for _ in range(20):  # warm the code paths (and their lazy imports) up first
            await (await proto.connect(session, base)).close()
        await asyncio.sleep(0.5)
        rss_before = rss_bytes(pid)
        meter.start()
        sockets = await connect_many(n, lambda i: proto.connect(session, base))

        async def keep(ws: aiohttp.ClientWebSocketResponse) -> None:  # answers pings
            while True:
                await recv_text(ws, proto)

        keepers = [asyncio.create_task(keep(ws)) for ws in sockets]
        await watch(keepers, args.settle)
        meter.stop()
        rss_after = rss_bytes(pid)
        idle_cpu = None
        if args.idle_window:  # what the open sockets cost while nothing happens but heartbeats
            cpu0, t0 = sum(cpu_seconds(p) for p in args.pid), time.monotonic()
            await watch(keepers, args.idle_window)
            idle_cpu = (sum(cpu_seconds(p) for p in args.pid) - cpu0) / (time.monotonic() - t0)
        for task in keepers:
            task.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
    figures = meter.figures(n)
    return {**figures, "unit": "connection", "connections": n, "rss_before": rss_before,
            "rss_after": rss_after, "rss_per_connection": (rss_after - rss_before) / n,
            "idle_cpu_per_second": idle_cpu, "idle_window": args.idle_window,
            "note": "server_cpu_per_unit here is the handshake cost while opening the connections"}


async def settle(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until the servers stop using CPU (they finish what follows the last frame):
    no clock tick in 0.1 s, or `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        now = sum(cpu_seconds(pid) for pid in pids)
        if now == last:
            return
        last = now
        await asyncio.sleep(0.1)


def failure(exc: BaseException) -> str:
    """A failed upgrade's cause, short enough to count: HTTP 503, timeout, reset, ..."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"HTTP {exc.status}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connect: {type(exc.os_error).__name__}"
    if isinstance(exc, ScenarioError):
        return str(exc)[:60]  # "socket closed: CLOSE code=4401 ...", "expected an authenticated ..."
    return type(exc).__name__


async def storm(args: argparse.Namespace, proto: V1, meter: Meter) -> dict[str, Any]:
    """N upgrades at once, as after a deploy or a network blip: every client of one
    session reconnects in the same moment. A failed upgrade is a result, not an error."""
    base, n = args.url[0], args.connections
    async with client_session() as session:
        await proto.setup(session, base)
        await (await proto.connect(session, base)).close()  # warm the code paths up first
        await settle(meter.pids)
        started = time.perf_counter()
        latencies: list[float] = []
        failures: collections.Counter[str] = collections.Counter()

        async def upgrade() -> aiohttp.ClientWebSocketResponse | None:
            try:
                async with asyncio.timeout(args.storm_timeout):
                    ws = await proto.connect(session, base)
            except Exception as exc:  # counted: the storm goes on
                failures[failure(exc)] += 1
                return None
            latencies.append(time.perf_counter() - started)  # storm start -> this first frame
            return ws

        counters = tcp_counters()
        meter.start()
        opened = [ws for ws in await asyncio.gather(*(upgrade() for _ in range(n))) if ws is not None]
        wall = time.perf_counter() - started
        await settle(meter.pids)
        meter.stop()
        figures = meter.figures(len(opened), latencies)
        figures.update(throughput=len(opened) / wall if wall > 0 else 0.0, storm_wall=wall,
                       tcp={k: v - counters.get(k, 0) for k, v in tcp_counters().items()})
        figures["close"] = await close_all(opened, Meter(meter.pids, meter.others))
    return {**figures, "unit": "upgrade", "connections": n, "ok": len(opened), "failed": n - len(opened),
            "failures": dict(failures), "latency_of": "storm start -> the socket's first frame"}


async def close_all(sockets: list[aiohttp.ClientWebSocketResponse], meter: Meter) -> dict[str, Any]:
    """Close every socket at the same moment (closing handshakes, not aborts)."""
    started = time.perf_counter()
    meter.start()
    answers = await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    wall = time.perf_counter() - started
    await settle(meter.pids)
    meter.stop()
    # Answered: the server sent its close frame back within the client's ws_close timeout.
    failed = sum(1 for ws, a in zip(sockets, answers) if isinstance(a, BaseException) or ws.close_code in (None, 1006))
    return {"sockets": len(sockets), "failed": failed, "wall": wall,
            "server_cpu": meter.figures(len(sockets))["server_cpu"]}


def user_name(i: int) -> str:
    """The name of the bench's user `i` (from 1): the `presence` scenario needs one per socket."""
    return f"u{i:02}"


USER_PASSWORD = "bench"


async def user_sessions(base: str, count: int) -> list[dict[str, str]]:
    """Log each of `count` users in: the Cookie header of each."""
    limit = asyncio.Semaphore(8)  # the demo hashes one password at a time and queues 32

    async def one(i: int) -> dict[str, str]:
        async with limit, client_session() as own:
            login = {"username": user_name(i + 1), "password": USER_PASSWORD}
            async with own.post(base + "/api/login", json=login) as response:
                if response.status != 200:
                    raise ScenarioError(f"login of {login['username']} failed: {response.status}")
            return {"Cookie": "; ".join(f"{c.key}={c.value}" for c in own.cookie_jar)}

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def redis_used_memory(port: int | None) -> int | None:
    """`used_memory` of the Redis on `port` (INFO memory), or None without one."""
    if port is None:
        return None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"INFO memory\r\n")
        size = int((await reader.readline())[1:])  # a bulk string: $<size>
        info = (await reader.readexactly(size + 2)).decode()
    finally:
        writer.close()
    return int(next(line for line in info.splitlines() if line.startswith("used_memory:")).split(":")[1])


async def presence(args: argparse.Namespace, proto: V1, meter: Meter) -> dict[str, Any]:
    base, pid, n = args.url[0], args.pid[0], args.connections
    async with bare_session() as bare:
        cookies = await user_sessions(base, n)
        sockets = await connect_many(n, lambda i: proto.connect(bare, base, cookies[i]))
        ids = [0] * n

        async def ask(i: int, event: str, room: str) -> None:
            ws = sockets[i]
            ids[i] += 1
            await ws.send_str(_dumps({"event": event, "data": {"room": room}, "id": ids[i]}))
            while True:  # presence changes (and chats of nobody) come in between
                frame = loads(await recv_text(ws, proto))
                if frame.get("ack") == ids[i]:
                    if "error" in frame:
                        raise ScenarioError(f"{event} {room}: {frame}")
                    return

        # Memory per member, first (later, the churn's freed memory would hide it):
        # --member-sockets more sockets per user, each in --member-rooms rooms of its own,
        # so n users in each room (a member is a user in a room).
        more = await connect_many(n * args.member_sockets, lambda i: proto.connect(bare, base, cookies[i % n]))
        sockets += more
        ids += [0] * len(more)
        await asyncio.sleep(1.0)
        rss_before, redis_before = rss_bytes(pid), await redis_used_memory(args.redis_port)
        for r in range(args.member_rooms):
            await asyncio.gather(*(ask(i, "join", f"m{i // n}-{r}") for i in range(n, len(sockets))))
        await asyncio.sleep(1.0)  # presence writes its window's changes
        rss_after, redis_after = rss_bytes(pid), await redis_used_memory(args.redis_port)
        members = len(more) * args.member_rooms
        await asyncio.gather(*(ws.close() for ws in more))
        del sockets[n:]

        latencies: list[float] = []
        count = 0
        stopping = False

        async def churn(i: int) -> None:
            nonlocal count
            while not stopping:
                t = time.perf_counter()
                await ask(i, "join", "churn")
                await ask(i, "leave", "churn")
                if meter.counting:
                    count += 1
                    latencies.append(time.perf_counter() - t)

        tasks = [asyncio.create_task(churn(i)) for i in range(n)]
        await watch(tasks, args.warmup)
        meter.start()
        await watch(tasks, args.duration)
        meter.stop()
        stopping = True
        units = count
        await finish(tasks)
        await asyncio.gather(*(ws.close() for ws in sockets))
    return {**meter.figures(units, latencies), "unit": "join+leave", "connections": n, "members": members,
            "rss_per_member": (rss_after - rss_before) / members,
            "redis_per_member": None if redis_before is None or redis_after is None
            else (redis_after - redis_before) / members}


SCENARIOS = {"echo": echo, "fanout": fanout, "handshake": handshake, "idle": idle, "storm": storm,
             "presence": presence}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--proto", choices=sorted(PROTOCOLS), required=True)
    p.add_argument("--url", action="append", required=True, help="http://127.0.0.1:PORT (repeatable: fanout)")
    p.add_argument("--pid", action="append", type=int, required=True, help="a server pid to measure (repeatable)")
    p.add_argument("--other-pid", action="append", default=[], metavar="NAME=PID",
                   help="another process to report the CPU of, e.g. redis=1234")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the measured window")
    p.add_argument("--fresh-cookies", action="store_true",
                   help="handshake, cookie storage: a new cookie (same session) for every handshake")
    p.add_argument("--room-on-first", action="store_true",
                   help="fanout: every member on the first --url; the others hold --bystanders sockets in another room")
    p.add_argument("--bystanders", type=int, default=50, help="fanout --room-on-first: sockets per other server")
    p.add_argument("--own-sessions", action="store_true",
                   help="echo, handshake (proto ours): a login, so a session, per connection (or loop)")
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                   help="the load generator's event loop (auto: uvloop when installed); servers never use uvloop")
    p.add_argument("--settle", type=float, default=2.0, help="idle: seconds to wait before reading RSS")
    p.add_argument("--idle-window", type=float, default=0.0,
                   help="idle: then seconds to measure the server's CPU over while the sockets stay idle")
    p.add_argument("--storm-timeout", type=float, default=60.0,
                   help="storm: seconds an upgrade may take (to its first frame) before it counts as failed")
    p.add_argument("--member-rooms", type=int, default=90,
                   help="presence: rooms each socket joins at the end, for memory per member")
    p.add_argument("--member-sockets", type=int, default=4,
                   help="presence: sockets per user that join --member-rooms rooms each, for memory")
    p.add_argument("--redis-port", type=int, help="presence: the Redis to read used_memory of")
    for url in (args := p.parse_args(argv)).url:
        if not url.startswith(("http://127.", "http://localhost")):
            p.error("the load generator only drives servers on this machine (127.0.0.0/8)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raise_open_files()
    others = dict(item.split("=", 1) for item in args.other_pid)
    meter = Meter(args.pid, {k: int(v) for k, v in others.items()})
    proto = PROTOCOLS[args.proto]()
    started = time.perf_counter()
    loop = args.loop
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    scenario = SCENARIOS[args.scenario](args, proto, meter)
    if loop == "uvloop":  # a cheaper client loop gets the servers closer to saturation
        import uvloop
        result = uvloop.run(scenario)
    else:
        result = asyncio.run(scenario)
    result.update(scenario=args.scenario, proto=args.proto, loop=loop, elapsed=time.perf_counter() - started)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
