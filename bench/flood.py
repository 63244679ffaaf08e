"""The load generator of the attacks (i) and (j): a bystander, a login flood, costly frames.

    python -m bench.flood bystander --url http://127.0.0.1:8080
    python -m bench.flood logins --url http://127.0.0.1:8080 --clients 64 --mode spread --block 10
    python -m bench.flood frames --url http://127.0.0.1:8080 --sockets 20 --size 65536

Roles (the runner, bench/attacks.py, starts one bystander and at most one attacker per
measurement, as separate processes, so that the attacker's busy event loop does not delay
the bystander's own reads):

* `bystander`: bob logs in (POST /api/login) and holds one websocket (GET /ws with the
  `session` cookie in a Cookie header); it sends `{"event":"echo","data":n,"id":n}` on a
  fixed schedule (every `--interval` seconds, whether or not the acks came back, so that a
  stalled server is not hidden by a client that waits) and measures each ack's latency
  from the moment its frame was sent.
* `logins`: `--clients` clients POST /api/login in tight loops with wrong passwords: all of
  them from 127.0.0.1 as alice (`--mode one`), or each from a loopback address of its own
  (127.BLOCK.x.y) with a username never used before for each attempt (`--mode spread`), so
  that no throttle hides the password hashing. Meanwhile it probes, about every second, a
  right login of alice from an address where she logged in before the flood (a "known
  browser") and of bob from 127.0.0.1 (where he too logged in before the flood).
* `frames`: alice opens `--sockets` sockets and sends on each, as fast as the server reads
  them (the sends wait for TCP), `{"event":"echo","data":[[],[],...]}` of `--size` bytes,
  without an id; each socket reads what comes back (errors, closes) and counts it. It goes
  on HOLD seconds past the window (the runner reads the server's side at its end), then
  logs out (the server closes the session's sockets) and resets its connections. With
  `--reconnect-every N` each socket is closed (a closing handshake: the server has read
  every frame before it answers) after N frames and a new one opened, over and over: a
  new socket starts with a full read budget.

Every process talks with the runner over its standard streams, one JSON object a line:
out `{"ready": {...}}` once set up; in `{"start": T, "begin": B, "end": E}` (times of
`time.monotonic()`, one clock for every process of the machine): the load runs from T to
E, and B..E is the measured window; out `{"result": {...}}` at the end. Every loop is
bounded by E, and every wait by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket as socketlib
import struct
import sys
import threading
import time
from typing import Any

import aiohttp

from bench.loadgen import loads, summarize
from bench.processes import raise_open_files

WAIT = 10.0  # seconds: the longest a login, a connect or a reply may take before it counts as failed
DRAIN = 15.0  # seconds the bystander waits after the window for the acks of its last echoes
HOLD = 0.5  # seconds the costly frames go on after the window: the runner reads the server's counters at its end
BOB, ALICE = ("bob", "builder"), ("alice", "wonderland")
KNOWN_ALICE = "127.0.0.4"  # the address of alice's "known browser" in the login probes
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


class Control:
    """The runner's lines on stdin, read by a daemon thread (an executor's would block exit)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in sys.stdin:
            self._loop.call_soon_threadsafe(self._lines.put_nowait, line)
        self._loop.call_soon_threadsafe(self._lines.put_nowait, None)

    async def start(self, timeout: float = 120.0) -> tuple[float, float, float]:
        while True:
            line = await asyncio.wait_for(self._lines.get(), timeout)
            if line is None:
                raise SystemExit("the runner closed stdin before `start`")
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "start" in message:
                return message["start"], message["begin"], message["end"]


async def sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def http_session(address: str | None) -> aiohttp.ClientSession:
    """A client whose connections leave from `address` (a loopback source address), without
    a cookie jar: cookies are sent by hand, as the brief's clients do."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, local_addr=(address, 0) if address else None),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=WAIT),
    )


async def login(session: aiohttp.ClientSession, base: str, user: str, password: str,
                cookie_name: str = "session") -> tuple[str, str | None, float]:
    """(the HTTP status or the failure, the session cookie, seconds): never raises."""
    started = time.monotonic()
    try:
        async with session.post(base + "/api/login", json={"username": user, "password": password}) as response:
            await response.read()
            cookie = response.cookies.get(cookie_name)
            return str(response.status), cookie.value if cookie else None, time.monotonic() - started
    except (asyncio.TimeoutError, TimeoutError):
        return "timeout", None, time.monotonic() - started
    except aiohttp.ClientError as exc:
        return type(exc).__name__, None, time.monotonic() - started


async def login_ok(session: aiohttp.ClientSession, base: str, user: str, password: str) -> str:
    """Log in (again after a 503, for at most about 10 s); returns the session cookie."""
    deadline = time.monotonic() + WAIT
    while True:
        status, cookie, _ = await login(session, base, user, password)
        if status == "200" and cookie:
            return cookie
        if status not in ("503", "timeout") or time.monotonic() > deadline:
            raise SystemExit(f"login of {user} failed: {status}")
        await asyncio.sleep(0.5)


async def open_socket(session: aiohttp.ClientSession, base: str, cookie: str,
                      cookie_name: str = "session") -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(base.replace("http", "ws", 1) + "/ws", headers={"Cookie": f"{cookie_name}={cookie}"},
                                  autoping=True, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5))
    msg = await ws.receive(WAIT)
    if msg.type is not aiohttp.WSMsgType.TEXT:
        raise SystemExit(f"socket closed before `connected`: {msg.type.name} {ws.close_code}")
    first = loads(msg.data)
    if first.get("event") != "connected" or not (first.get("data") or {}).get("user"):
        raise SystemExit(f"expected an authenticated `connected` frame, got {msg.data[:200]}")
    return ws


async def logout_status(session: aiohttp.ClientSession, base: str, cookie: str, cookie_name: str = "session") -> str:
    try:
        async with session.post(base + "/api/logout", headers={"Cookie": f"{cookie_name}={cookie}"}) as response:
            await response.read()
            return str(response.status)
    except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
        return type(exc).__name__


def abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the connection with a reset: the server's kernel discards what it has not read yet."""
    sock = ws.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    if transport is not None:
        transport.abort()


# -- the bystander ---------------------------------------------------------------------


async def bystander(args: argparse.Namespace) -> dict[str, Any]:
    control = Control()
    async with http_session(args.address) as session:
        cookie = await login_ok(session, args.url, *BOB)
        ws = await open_socket(session, args.url, cookie)
        say({"ready": {"pid": os.getpid(), "port": ws.get_extra_info("sockname")[1]}})
        start, begin, end = await control.start()
        sent: dict[int, float] = {}  # echo n -> when it was sent, until its ack comes
        in_window: set[int] = set()
        latencies: list[float] = []
        lags: list[float] = []  # how late this process sent, against its schedule (its own lag)
        errors: collections.Counter[str] = collections.Counter()
        closed: list[Any] = []
        answered = asyncio.Event()

        async def read() -> None:
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    closed.append(ws.close_code or msg.type.name)
                    answered.set()
                    return
                now = time.monotonic()
                frame = loads(msg.data)
                n = frame.get("ack")
                t = sent.pop(n, None) if type(n) is int else None
                if t is None:
                    errors["unexpected frame"] += 1
                    continue
                if "error" in frame or frame.get("data") != n:
                    errors[(frame.get("error") or {}).get("code", "wrong data")] += 1
                if n in in_window:
                    in_window.discard(n)
                    latencies.append(now - t)
                    if sending.done() and not in_window:
                        answered.set()

        async def send() -> None:
            n = 0
            while True:
                n += 1
                due = start + n * args.interval
                if due >= end:
                    return
                await sleep_until(due)
                t = time.monotonic()
                sent[n] = t
                if t >= begin:
                    in_window.add(n)
                    lags.append(t - due)
                await ws.send_str(_dumps({"event": "echo", "data": n, "id": n}))

        reading = asyncio.create_task(read())
        sending = asyncio.create_task(send())
        try:
            await asyncio.wait_for(sending, end - time.monotonic() + WAIT)
        except (asyncio.TimeoutError, ConnectionError):
            errors["send failed"] += 1
        if in_window and not closed:
            try:
                await asyncio.wait_for(answered.wait(), args.drain)
            except asyncio.TimeoutError:
                pass
        waited = time.monotonic()
        # An echo never answered counts with the time it waited: a lower bound of its latency.
        unanswered = [waited - sent[n] for n in in_window if n in sent]
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        try:
            await asyncio.wait_for(ws.close(), 5)
        except (asyncio.TimeoutError, ConnectionError):
            abort(ws)
    return {"latency": summarize(latencies + unanswered), "answered": len(latencies), "unanswered": len(unanswered),
            "send_lag": summarize(lags), "errors": dict(errors), "closed": closed[0] if closed else None}


# -- the login flood -------------------------------------------------------------------


def flood_address(mode: str, block: int, i: int) -> str:
    return "127.0.0.1" if mode == "one" else f"127.{block}.{i // 250}.{i % 250 + 1}"


async def logins(args: argparse.Namespace) -> dict[str, Any]:
    control = Control()
    base = args.url
    sessions = [http_session(flood_address(args.mode, args.block, i)) for i in range(args.clients)]
    probes = {"alice, known address": (http_session(KNOWN_ALICE), ALICE),
              "bob, from 127.0.0.1": (http_session("127.0.0.1"), BOB)}
    try:
        # Right logins before the flood make these addresses known for these users.
        setup = {name: (await login(session, base, *user))[0] for name, (session, user) in probes.items()}
        say({"ready": {"pid": os.getpid(), "setup": setup}})
        start, begin, end = await control.start()
        window: collections.Counter[str] = collections.Counter()
        whole: collections.Counter[str] = collections.Counter()
        latencies: dict[str, list[float]] = collections.defaultdict(list)
        probed: dict[str, collections.Counter[str]] = {name: collections.Counter() for name in probes}
        probe_latency: dict[str, list[float]] = {name: [] for name in probes}
        await sleep_until(start)

        async def flood(i: int) -> None:
            session, k = sessions[i], 0
            while time.monotonic() < end:
                k += 1
                user = "alice" if args.mode == "one" else f"user{i}-{k}"
                status, _, seconds = await login(session, base, user, f"wrong-{i}-{k}")
                now = time.monotonic()
                whole[status] += 1
                if begin <= now < end:
                    window[status] += 1
                    latencies[status].append(seconds)
                if not status.isdigit():
                    await asyncio.sleep(0.01)  # a refused connection: do not spin

        async def probe(name: str, offset: float) -> None:
            session, user = probes[name]
            k = 0
            while (due := begin + offset + k * args.probe_every) < end:
                await sleep_until(due)
                status, _, seconds = await login(session, base, *user)
                probed[name][status] += 1
                probe_latency[name].append(seconds)
                k += 1

        tasks = [asyncio.create_task(flood(i)) for i in range(args.clients)]
        tasks += [asyncio.create_task(probe(name, i * args.probe_every / len(probes))) for i, name in enumerate(probes)]
        done, pending = await asyncio.wait(tasks, timeout=end - time.monotonic() + WAIT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for session in [*sessions, *(s for s, _ in probes.values())]:
            await session.close()
    return {"window": dict(window), "whole": dict(whole), "setup": setup,
            "latency": {status: summarize(values) for status, values in latencies.items()},
            "probes": {name: {"statuses": dict(probed[name]), "latency": summarize(probe_latency[name])}
                       for name in probes},
            "unfinished": len(pending)}


# -- costly frames ---------------------------------------------------------------------


def costly_frame(size: int) -> str:
    """`{"event":"echo","data":[[],[],...]}` of at most `size` bytes, as long as it fits."""
    head, tail = '{"event":"echo","data":[', "]}"
    count = max(1, (size - len(head) - len(tail) + 1) // 3)  # "[]" and a comma, but the last
    return head + ",".join(["[]"] * count) + tail


async def frames(args: argparse.Namespace) -> dict[str, Any]:
    control = Control()
    text = costly_frame(args.size)
    size = len(text.encode())
    async with http_session(args.address) as session:
        cookie = await login_ok(session, args.url, *ALICE)
        sockets = list(await asyncio.gather(*(open_socket(session, args.url, cookie) for _ in range(args.sockets))))
        ports = [] if args.reconnect_every else [ws.get_extra_info("sockname")[1] for ws in sockets]
        say({"ready": {"pid": os.getpid(), "ports": ports, "size": size}})
        start, begin, end = await control.start()
        sent_window = [0] * len(sockets)
        sent_whole = [0] * len(sockets)
        received: collections.Counter[str] = collections.Counter()
        closes: collections.Counter[str] = collections.Counter()
        await sleep_until(start)

        async def attack(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            while time.monotonic() < end + HOLD and not ws.closed:
                await ws.send_str(text)  # waits while TCP holds it back
                sent_whole[i] += 1
                if begin <= time.monotonic() < end:
                    sent_window[i] += 1

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    closes[str(ws.close_code or msg.type.name)] += 1
                    return
                frame = loads(msg.data)
                data = frame.get("data") if frame.get("event") == "error" else frame.get("error")
                received[(data or {}).get("code", frame.get("event") or "ack") if type(data) is dict else "other"] += 1

        async def reconnect(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            while time.monotonic() < end + HOLD:
                for _ in range(args.reconnect_every):
                    await ws.send_str(text)
                    sent_whole[i] += 1
                    if begin <= time.monotonic() < end:
                        sent_window[i] += 1
                await asyncio.wait_for(ws.close(), WAIT)
                closes[str(ws.close_code)] += 1
                reconnects[i] += 1
                ws = sockets[i] = await open_socket(session, args.url, cookie)

        reconnects = [0] * len(sockets)
        if args.reconnect_every:
            attacks = [asyncio.create_task(reconnect(i, ws)) for i, ws in enumerate(sockets)]
            readers = []
        else:
            attacks = [asyncio.create_task(attack(i, ws)) for i, ws in enumerate(sockets)]
            readers = [asyncio.create_task(read(ws)) for ws in sockets]
        await asyncio.wait(attacks, timeout=end + HOLD - time.monotonic())
        # A reset alone would not do: the server reads and parses what its kernel holds of a
        # reset connection. Logging out makes it close every socket of this session at once.
        logout = await logout_status(session, args.url, cookie)
        for ws in sockets:
            abort(ws)
        for task in attacks + readers:
            task.cancel()
        outcomes = await asyncio.gather(*attacks, *readers, return_exceptions=True)
        failed = collections.Counter(type(o).__name__ for o in outcomes
                                     if isinstance(o, BaseException) and not isinstance(o, asyncio.CancelledError))
    return {"size": size, "ports": ports, "sent_window": sent_window, "sent_whole": sent_whole,
            "received": dict(received), "closes": dict(closes), "failed": dict(failed),
            "reconnect_every": args.reconnect_every, "connections": [n + 1 for n in reconnects], "logout": logout}


ROLES = {"bystander": bystander, "logins": logins, "frames": frames}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.splitlines()[0])
    p.add_argument("role", choices=sorted(ROLES))
    p.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    p.add_argument("--address", help="the loopback source address of this process's connections")
    p.add_argument("--interval", type=float, default=0.02, help="bystander: seconds between echoes")
    p.add_argument("--drain", type=float, default=DRAIN, help="bystander: seconds to wait for the last acks")
    p.add_argument("--clients", type=int, default=16, help="logins: concurrent clients")
    p.add_argument("--mode", choices=["one", "spread"], default="one",
                   help="logins: one: every client from 127.0.0.1 as alice; spread: each from an address of its "
                        "own, a new username every attempt")
    p.add_argument("--block", type=int, default=10, help="logins --mode spread: addresses 127.BLOCK.x.y")
    p.add_argument("--probe-every", type=float, default=1.0,
                   help="logins: seconds between the right-login probes of each user (from the window's start)")
    p.add_argument("--sockets", type=int, default=1, help="frames: attacker sockets")
    p.add_argument("--size", type=int, default=1 << 16, help="frames: bytes per frame (at most)")
    p.add_argument("--reconnect-every", type=int, default=0, metavar="N",
                   help="frames: close each socket after N frames and open a new one (0: never)")
    args = p.parse_args(argv)
    if not args.url.startswith("http://127."):
        p.error("only servers on this machine (127.0.0.0/8)")
    if args.address and not args.address.startswith("127."):
        p.error("only loopback source addresses (127.0.0.0/8)")
    if not 1 <= args.block <= 254:
        p.error("--block is 1 to 254")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raise_open_files()
    started = time.monotonic()
    result = asyncio.run(asyncio.wait_for(ROLES[args.role](args), 300))
    result.update(role=args.role, elapsed=time.monotonic() - started)
    say({"result": result})


if __name__ == "__main__":
    main()
