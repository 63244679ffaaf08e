"""The load generator of the soak (h): sockets on two processes chat in rooms for minutes
while bench/faults.py restarts Redis and kills a process; afterwards every delivery is
checked against who was in the room when its chat was sent.

    python -m bench.soak --url http://127.0.0.1:A --url http://127.0.0.1:B --duration 180 --rate 200

It talks with the runner (bench/faults.py) over its standard streams, one JSON object a line:

* out `{"ready": T}`: every socket is connected and in its room; the chat runs from T for
  `--duration` seconds. T and every other time is `time.monotonic()`, one clock for every
  process of the machine;
* out `{"stopped": T}`: it stopped sending, the last acks and deliveries came in;
* in `{"windows": [{"name", "start", "healthy", "begin", "end"}, ...]}`: the faults;
* out: the figures (the last line).

Who is expected to receive what:

* A socket's **membership** of its room starts when the ack of its `join` arrives (the
  server has put it in the room before it acks) and ends when this process sees the
  socket close. A socket that closes inside a fault window (its process was killed)
  stops being a member at the fault's start: a socket on a dead process is not expected.
* A chat answered `{"ok": true}` is **expected** once by every member of its room at the
  moment it was sent, the sender included (the demo's chat goes to the whole room). A chat
  answered with an error was not emitted: nothing is expected. A chat whose socket closed
  before its ack came is counted apart, and so are its deliveries.
* A chat is **inside a fault window** when it was sent between `begin` and `end` of a
  window (the runner's: the fault's start minus a margin, to the moment every server
  answered /healthz 200 again plus the margin); everything else is outside, where the
  target is no loss at all.

Chat texts are `"<chat id> <send time>"`; each socket keeps the ids it received and when.
Every loop is bounded by the run's deadline, and every wait by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import random
import sys
import time
from array import array
from typing import Any

import aiohttp

from bench.loadgen import V1, ScenarioError, failure, loads, recv_text, summarize
from bench.processes import raise_open_files

USERS = [("alice", "wonderland"), ("bob", "builder")]
WAIT = 10.0  # seconds: the longest a connect, a join or a login may take
TICK = 0.01  # seconds between rounds of sends
DRAIN = 10.0  # seconds the last acks, then the last deliveries, may take after the chat stops
RECONNECT_FOR = 60.0  # seconds a dropped socket keeps trying to come back
SESSION_ENDED = {4001, 4002, 4003, 4401}  # close codes after which only a new login helps
PENDING, OK, ERROR, CLOSED, SEND_FAILED = range(5)
OUTCOMES = {PENDING: "no ack by the end", OK: "ok", CLOSED: "socket closed before the ack",
            SEND_FAILED: "send failed (socket closing)"}
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_PROTO = V1()


class NeedLogin(Exception):
    """The session of this cookie has ended (logged out, expired, lost by Redis)."""

    def __init__(self, code: int | None, cookie: str) -> None:
        super().__init__(f"closed with {code}")
        self.code = code
        self.cookie = cookie


class Login:
    """One browser session: the sockets of several slots share its cookie."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.cookie = ""
        self.logins = 0
        self._lock = asyncio.Lock()

    async def renew(self, http: aiohttp.ClientSession, urls: list[str], stale: str) -> None:
        """Log in again, unless another socket of this session already did since `stale`.
        A fresh login (no cookie sent) makes a new session: no other socket is replaced."""
        async with self._lock:
            if self.cookie != stale:
                return
            errors = []
            for url in urls:  # one of them may be the dead process
                try:
                    async with asyncio.timeout(WAIT):
                        async with http.post(url + "/api/login",
                                             json={"username": self.user, "password": self.password}) as r:
                            if r.status == 200 and "session" in r.cookies:
                                self.cookie = r.cookies["session"].value
                                self.logins += 1
                                return
                            errors.append(f"HTTP {r.status}")
                except Exception as exc:  # the next url may answer
                    errors.append(failure(exc))
            raise ScenarioError(f"login of {self.user} failed: {', '.join(errors)}")


class Slot:
    """A place for one socket: its server, room and session; it reconnects when dropped."""

    __slots__ = ("index", "server", "room", "login", "drops")

    def __init__(self, index: int, server: int, room: int, login: Login) -> None:
        self.index, self.server, self.room, self.login = index, server, room, login
        self.drops = 0


class Life:
    """One connection of a slot, from its join ack to its close, and what it received."""

    __slots__ = ("slot", "label", "room", "ws", "number", "joined", "left", "until", "code", "ids", "times",
                 "pending", "next_id", "early")

    def __init__(self, slot: Slot, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.slot, self.ws, self.room = slot, ws, slot.room
        self.label = "AB"[slot.server] + ("'" if slot.drops else "")  # B': a socket that came back
        self.number = -1  # its index in Soak.lives, once joined
        self.joined = math.inf
        self.left = math.inf  # when it was seen closing
        self.until = math.inf  # the end of its membership (see the module docstring)
        self.code: int | None = None
        self.ids = array("I")  # chat ids received, in order
        self.times = array("d")  # when each arrived
        self.pending: dict[int, int | asyncio.Future[dict[str, Any]]] = {}  # ack id -> chat id, or a waiter
        self.next_id = 2  # 1 is the join
        self.early = 0  # chats that arrived before the join ack


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.urls = [u.rstrip("/") for u in args.url]
        self.logins = [Login(*USERS[i % len(USERS)]) for i in range(args.sessions)]
        # Slot i: server i % 2; room (i // 2) % rooms, so each room has members on both;
        # session (i // 40) % sessions, so each session too.
        self.slots = [Slot(i, i % len(self.urls), (i // 2) % args.rooms, self.logins[(i // 40) % args.sessions])
                      for i in range(args.connections)]
        self.lives: list[Life] = []
        self.open: list[Life] = []  # joined and not closed: the senders
        self.chat_room = array("H")
        self.chat_sent = array("d")
        self.chat_sender = array("I")  # index in self.lives
        self.chat_state = bytearray()
        self.chat_error: dict[int, str] = {}
        self.frames: collections.Counter[str] = collections.Counter()  # frames other than chats and acks
        self.drops: list[tuple[float, int | None, str]] = []  # (when, close code, label)
        self.reconnects: list[tuple[float, float]] = []  # (dropped, member again)
        self.reconnect_failures: collections.Counter[str] = collections.Counter()
        self.gave_up = 0
        self.no_sender = 0
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.http: aiohttp.ClientSession | None = None

    # -- sockets -----------------------------------------------------------------------

    async def open_slot(self, slot: Slot) -> Life:
        """Connect, read `connected`, join the room; the life is a member from the join ack."""
        assert self.http is not None
        cookie = slot.login.cookie
        url = self.urls[slot.server].replace("http", "ws", 1) + "/ws"
        ws = await self.http.ws_connect(url, headers={"Cookie": f"session={cookie}"}, max_msg_size=0,
                                        timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
        life = Life(slot, ws)
        try:
            async with asyncio.timeout(WAIT):
                try:
                    first = loads(await recv_text(ws, _PROTO))
                except ScenarioError:
                    if ws.close_code in SESSION_ENDED:
                        raise NeedLogin(ws.close_code, cookie) from None
                    raise
                if first.get("event") != "connected" or not first["data"].get("user"):
                    raise ScenarioError(f"expected an authenticated `connected` frame, got {first!r}")
                await ws.send_str(_dumps({"event": "join", "data": {"room": f"r{slot.room}"}, "id": 1}))
                while True:  # chats of the room may come before the ack: the server joined first
                    frame = loads(await recv_text(ws, _PROTO))
                    if frame.get("ack") == 1:
                        break
                    if frame.get("event") == "chat":
                        life.early += 1
                    else:
                        self.frames[str(frame.get("event"))] += 1
                if "error" in frame:
                    raise ScenarioError(f"join answered {frame['error'].get('code')}")
        except BaseException:
            await ws.close()
            raise
        life.joined = time.monotonic()
        life.number = len(self.lives)
        self.lives.append(life)
        self.open.append(life)
        self._spawn(self.read(life))
        return life

    async def read(self, life: Life) -> None:
        """Record every frame of one socket until it closes."""
        ws = life.ws
        try:
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    try:
                        self.frame(life, msg.data)
                    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # counted, not fatal
                        self.frames[f"unreadable frame ({type(exc).__name__})"] += 1
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                  aiohttp.WSMsgType.ERROR):
                    return
        finally:
            self.ended(life)

    def frame(self, life: Life, text: str) -> None:
        frame = loads(text)
        event = frame.get("event")
        if event == "chat":
            life.ids.append(int(frame["data"]["text"].partition(" ")[0]))
            life.times.append(time.monotonic())
            return
        ack = frame.get("ack")
        if ack is None:
            self.frames[str(event)] += 1
            return
        waiter = life.pending.pop(ack, None)
        if type(waiter) is int:
            error = frame.get("error")
            if error is None:
                self.chat_state[waiter] = OK
            else:
                self.chat_state[waiter] = ERROR
                self.chat_error[waiter] = str(error.get("code"))
        elif waiter is not None:
            if not waiter.done():  # type: ignore[union-attr]
                waiter.set_result(frame)  # type: ignore[union-attr]
        else:
            self.frames["ack of nothing sent"] += 1

    def ended(self, life: Life) -> None:
        life.left = time.monotonic()
        life.code = life.ws.close_code
        if life in self.open:
            self.open.remove(life)
        for waiter in life.pending.values():
            if type(waiter) is int:
                if self.chat_state[waiter] == PENDING:
                    self.chat_state[waiter] = CLOSED
            elif not waiter.done():  # type: ignore[union-attr]
                waiter.set_exception(ScenarioError("socket closed"))  # type: ignore[union-attr]
        life.pending.clear()
        if not self.stopping:
            life.slot.drops += 1
            self.drops.append((life.left, life.code, life.label))
            self._spawn(self.reconnect(life.slot, life.left))

    async def reconnect(self, slot: Slot, dropped: float) -> None:
        """Come back with backoff (and a new login if the session ended), for a bounded time."""
        delay = 0.2
        deadline = dropped + RECONNECT_FOR
        while not self.stopping and time.monotonic() < deadline:
            await asyncio.sleep(delay * (0.5 + random.random()))
            try:
                life = await self.open_slot(slot)
                self.reconnects.append((dropped, life.joined))
                return
            except NeedLogin as exc:
                self.reconnect_failures[f"closed {exc.code}: logged in again"] += 1
                try:
                    await slot.login.renew(self.http, self.urls, exc.cookie)  # type: ignore[arg-type]
                except Exception as login_exc:  # counted; the next round tries again
                    self.reconnect_failures[f"login: {failure(login_exc)}"] += 1
                continue
            except Exception as exc:  # counted; the next round tries again
                self.reconnect_failures[failure(exc)] += 1
            delay = min(delay * 2, 2.0)
        if not self.stopping:
            self.gave_up += 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- the chat ----------------------------------------------------------------------

    async def send(self, until: float) -> None:
        """`--rate` chats per second from random members, until `until`; acks are not awaited."""
        rng = random.Random(8)
        rate = self.args.rate
        credit, last = 0.0, time.monotonic()
        while (now := time.monotonic()) < until:
            credit = min(credit + (now - last) * rate, rate)  # a late loop sends at most a second's worth
            last = now
            while credit >= 1:
                credit -= 1
                await self.chat(rng)
            await asyncio.sleep(TICK)

    async def chat(self, rng: random.Random) -> None:
        if not self.open:
            self.no_sender += 1
            return
        life = self.open[rng.randrange(len(self.open))]
        cid, n = len(self.chat_sent), life.next_id
        life.next_id += 1
        sent = time.monotonic()
        self.chat_sent.append(sent)
        self.chat_room.append(life.room)
        self.chat_sender.append(life.number)
        self.chat_state.append(PENDING)
        life.pending[n] = cid
        text = f"{cid} {sent:.6f}"
        try:
            async with asyncio.timeout(WAIT):
                await life.ws.send_str(_dumps({"event": "chat", "data": {"room": f"r{life.room}", "text": text},
                                               "id": n}))
        except Exception:  # closing: its reader sees the close
            life.pending.pop(n, None)
            self.chat_state[cid] = SEND_FAILED

    async def drain(self) -> None:
        """Wait for the last acks, then until no delivery came for a second (bounded)."""
        deadline = time.monotonic() + DRAIN
        while any(type(w) is int for life in self.open for w in life.pending.values()):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + DRAIN
        last = -1
        while time.monotonic() < deadline:
            total = sum(len(life.ids) for life in self.lives)
            if total == last:
                return
            last = total
            await asyncio.sleep(1.0)

    async def room_sizes(self) -> list[dict[str, Any]]:
        """Ask each room's size (a `join` again is idempotent and acks the size of every
        process) and compare it with the members this process knows are connected."""
        out = []
        for room in range(self.args.rooms):
            members = [life for life in self.open if life.room == room]
            reported = None
            if members:
                life = members[0]
                n, waiter = life.next_id, asyncio.get_running_loop().create_future()
                life.next_id += 1
                life.pending[n] = waiter
                try:
                    async with asyncio.timeout(WAIT):
                        await life.ws.send_str(_dumps({"event": "join", "data": {"room": f"r{room}"}, "id": n}))
                        reported = (await waiter).get("data", {}).get("members")
                except Exception as exc:  # reported as None
                    self.frames[f"room size probe: {failure(exc)}"] += 1
            out.append({"room": room, "connected": len(members), "reported": reported})
        return out

    # -- the figures -------------------------------------------------------------------

    def figures(self, windows: list[dict[str, Any]], ready: float, stopped: float) -> dict[str, Any]:
        spans = sorted((w["begin"], w["end"], w["start"], w["name"]) for w in windows)

        def window(t: float) -> tuple[float, float, float, str] | None:
            for span in spans:
                if span[0] <= t < span[1]:
                    return span
            return None

        for life in self.lives:
            dropped = window(life.left) if life.left != math.inf else None
            life.until = min(life.left, dropped[2]) if dropped else life.left
        spans_of = [window(t) for t in self.chat_sent]
        inside = bytearray(0 if span is None else 1 for span in spans_of)
        by_room: dict[int, list[Life]] = collections.defaultdict(list)
        for life in self.lives:
            by_room[life.room].append(life)

        acks: list[collections.Counter[str]] = [collections.Counter(), collections.Counter()]  # outside, inside
        expected = [0, 0]
        for cid, state in enumerate(self.chat_state):
            where = inside[cid]
            acks[where]["error: " + self.chat_error[cid] if state == ERROR else OUTCOMES[state]] += 1
            if state == OK:
                t = self.chat_sent[cid]
                expected[where] += sum(1 for life in by_room[self.chat_room[cid]] if life.joined <= t < life.until)

        got, dups = [0, 0], [0, 0]
        latencies: list[list[float]] = [[], []]
        by_pair: dict[str, list[float]] = collections.defaultdict(list)  # outside: sender -> recipient
        bins: dict[int, list[float]] = {}  # 5 s of send time -> [deliveries, over 100 ms, over 1 s, max]
        unexpected: collections.Counter[str] = collections.Counter()
        for life in self.lives:
            seen: set[int] = set()
            for cid, arrived in zip(life.ids, life.times):
                where = inside[cid]
                if cid in seen:
                    dups[where] += 1
                    continue
                seen.add(cid)
                t, state = self.chat_sent[cid], self.chat_state[cid]
                if self.chat_room[cid] != life.room:
                    unexpected["from another room"] += 1
                elif state == OK and life.joined <= t < life.until:
                    got[where] += 1
                    latency = arrived - t
                    latencies[where].append(latency)
                    if not where:
                        by_pair[f"{self.lives[self.chat_sender[cid]].label} -> {life.label}"].append(latency)
                    b = bins.setdefault(int((t - ready) // 5) * 5, [0, 0, 0, 0.0])
                    b[0] += 1
                    b[1] += latency > 0.1
                    b[2] += latency > 1.0
                    b[3] = max(b[3], latency)
                elif state == OK and t < life.joined:
                    unexpected["sent before the join ack (the server joins first)"] += 1
                elif state == OK:
                    unexpected["sent after the membership ended (a killed process, still sending)"] += 1
                elif state == ERROR:
                    unexpected["of a chat answered with an error"] += 1
                else:
                    unexpected[f"of a chat without an ok ack ({OUTCOMES[state]})"] += 1
        lost = self.losses(spans_of, ready) if got != expected else {}
        return {
            "chats": len(self.chat_sent),
            "chats_per_class": [inside.count(0), inside.count(1)],
            "acks": [dict(a) for a in acks],
            "expected": expected,
            "received": got,
            "lost": [e - g for e, g in zip(expected, got)],
            "duplicates": dups,
            "unexpected": dict(unexpected),
            "early": sum(life.early for life in self.lives),
            "latency": [summarize(x) for x in latencies],
            "latency_by_pair": {k: summarize(v) for k, v in sorted(by_pair.items())},
            "latency_by_time": [[start, *b] for start, b in sorted(bins.items())],
            "losses": lost,
            "deliveries_per_second": sum(got) / (stopped - ready) if stopped > ready else 0.0,
        }

    def losses(self, spans: list[tuple[float, float, float, str] | None], ready: float) -> dict[str, Any]:
        """Where the lost deliveries were: by fault, sender -> recipient, and send time (5 s
        bins from the start outside the windows, 0.5 s bins from the fault's start inside);
        examples of those outside."""
        by_pair: collections.Counter[str] = collections.Counter()
        by_bin: collections.Counter[str] = collections.Counter()
        examples: list[dict[str, Any]] = []
        by_room: dict[int, list[Life]] = collections.defaultdict(list)
        for life in self.lives:
            by_room[life.room].append(life)
        chats_by_room: dict[int, list[int]] = collections.defaultdict(list)
        for cid, state in enumerate(self.chat_state):
            if state == OK:
                chats_by_room[self.chat_room[cid]].append(cid)
        for room, cids in chats_by_room.items():
            received = {id(life): set(life.ids) for life in by_room[room]}
            for cid in cids:
                t = self.chat_sent[cid]
                sender = self.lives[self.chat_sender[cid]]
                span = spans[cid]
                where = "outside" if span is None else span[3]
                if span is None:
                    when = f"outside: {int((t - ready) // 5) * 5}-{int((t - ready) // 5) * 5 + 5} s"
                else:
                    when = f"{where}: {math.floor((t - span[2]) * 2) / 2:+.1f} s from its start"
                for life in by_room[room]:
                    if life.joined <= t < life.until and cid not in received[id(life)]:
                        by_pair[f"{where}: {sender.label} -> {life.label}"] += 1
                        by_bin[when] += 1
                        if span is None and len(examples) < 10:
                            examples.append({"chat": cid, "sent": round(t - ready, 3), "room": room,
                                             "from": sender.label, "to": life.label, "to_slot": life.slot.index,
                                             "to_closed": (None if life.left == math.inf
                                                           else round(life.left - ready, 3)),
                                             "to_code": life.code})
        return {"by_pair": dict(by_pair), "by_time": dict(sorted(by_bin.items())), "examples": examples}

    def drop_figures(self, windows: list[dict[str, Any]], ready: float) -> dict[str, Any]:
        def where(t: float) -> str:
            for w in windows:
                if w["begin"] <= t < w["end"]:
                    return w["name"]
            return "outside"

        drops = collections.Counter(f"{where(t)}: {label} closed {code}" for t, code, label in self.drops)
        back = [member - dropped for dropped, member in self.reconnects]
        return {"drops": dict(drops), "reconnected": len(self.reconnects), "gave_up": self.gave_up,
                "reconnect_time": summarize(back), "reconnect_failures": dict(self.reconnect_failures),
                "logins": sum(login.logins for login in self.logins)}


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    state = Soak(args)
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=WAIT, sock_read=None)) as http:
        state.http = http
        for login in state.logins:
            await login.renew(http, state.urls, "")
        limit = asyncio.Semaphore(50)

        async def first(slot: Slot) -> None:
            async with limit:
                await state.open_slot(slot)

        await asyncio.gather(*(first(slot) for slot in state.slots))
        ready = time.monotonic()
        _say({"ready": ready, "sockets": len(state.open)})
        cpu0 = os.times()
        await state.send(ready + args.duration)
        sent_until = time.monotonic()
        await state.drain()
        rooms_at = time.monotonic()
        rooms = await state.room_sizes()
        state.stopping = True  # from here on a close is ours
        cpu1 = os.times()
        stopped = time.monotonic()
        _say({"stopped": stopped})
        windows = await _read_windows(args.windows_timeout)
        result = state.figures(windows, ready, sent_until)
        result.update(state.drop_figures(windows, ready))
        result.update(
            ready=ready, sent_until=sent_until, stopped=stopped, rooms=rooms, rooms_at=rooms_at - ready,
            frames=dict(state.frames),
            no_sender=state.no_sender, sockets=len(state.slots), connected_at_end=len(state.open),
            loadgen_util=((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (stopped - ready),
            windows=[{**w, "begin": w["begin"] - ready, "end": w["end"] - ready, "start": w["start"] - ready,
                      "healthy": w["healthy"] - ready} for w in windows],
        )
        for task in list(state.tasks):
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)
    return result


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def _read_windows(timeout: float) -> list[dict[str, Any]]:
    line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline), timeout)
    if not line:
        raise ScenarioError("the runner closed stdin without sending the fault windows")
    return list(json.loads(line)["windows"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--url", action="append", required=True, help="http://127.0.0.1:PORT, once per process")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--sessions", type=int, default=10, help="logins, alternately alice and bob")
    p.add_argument("--rate", type=float, default=200.0, help="chats per second")
    p.add_argument("--duration", type=float, default=180.0, help="seconds of chat")
    p.add_argument("--windows-timeout", type=float, default=300.0,
                   help="seconds to wait for the fault windows on stdin after stopping")
    args = p.parse_args(argv)
    for url in args.url:
        if not url.startswith(("http://127.", "http://localhost")):
            p.error("the soak only drives servers on this machine (127.0.0.0/8)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raise_open_files()
    try:
        import uvloop
        result = uvloop.run(soak(args))  # a cheaper client loop: the load generator is one process
    except ModuleNotFoundError as exc:  # pragma: no cover
        if exc.name != "uvloop":
            raise
        result = asyncio.run(soak(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
