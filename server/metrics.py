"""Prometheus metrics of one hub: `GET /metrics` through prometheus_client, off unless asked for.

    hub = setup(app, sessions)
    expose_metrics(app, hub)                  # GET /metrics on the app's own port
    expose_metrics(app, hub, port=9100)       # or on a listener of its own

The series are listed in README.md, "Metrics". Until `expose_metrics` is called the hub's
`metrics` is `NO_METRICS`, whose hooks do nothing, and the path of a message calls none
(see `Probe`).

What a message costs counts: an echo costs the server about 90,000 instructions (callgrind,
on Python 3.11 as pyenv builds it), and a Python call that does nothing about 1,000 of
them. A `prometheus_client.Counter.inc()` takes a lock and costs about 0.4 us, a labelled
one 1.3 us, a histogram's `observe()` 0.85 us: several per message would be 5% or more.
So while metrics are on, a message costs one call (`handled`, which adds to a dict and a
list) and a few additions on the socket, and a collector turns the sums into Prometheus
families when Prometheus scrapes. The same collector reads what costs nothing to keep: the
open sockets and rooms from the hub, and the counters the lower layers keep themselves
(the tracking cache's hits, the backplane's publishes, the store's errors).

Label values are bounded by the code, never by clients: an event's name only when it has
a handler (else "unknown"), close codes only those with a name here (else "other"), and
rooms never.
"""

from __future__ import annotations

import functools
import itertools
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator, Mapping

from aiohttp import web

from .codes import CloseCode
from .redis_sessions import RedisSessionBridge

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from .hub import Hub
    from .sockets import Socket

__all__ = ["METRICS", "NO_METRICS", "Metrics", "Probe", "expose_metrics"]

PREFIX = "session_sockets_"
# Handler latency buckets: powers of two of nanoseconds, 2**17 (131 us) to 2**33 (8.6 s).
# A duration's bucket is its `bit_length()`, one C call: finding it among decimal bounds
# (bisect) cost more than the rest of the hook.
BUCKET_BITS = range(17, 34)
# Close codes that get a label value of their own; a client may close with any code from
# 3000 to 4999, and those are counted as "other".
NAMED_CODES = frozenset(int(c) for c in CloseCode) | {1002, 1003, 1005, 1006, 1008, 1010}
UNKNOWN = "unknown"
# Label values reported as 0 before they first happen: a counter that appears at 1 shows
# no increase to `rate()`, and the alerts (README.md, "Running in production") need them.
REFUSALS = ("forbidden_origin", "bad_request", "unavailable", "unauthorized", "too_many_sockets")
STORE_OPS = ("read", "write", "check")
BACKPLANE_OPS = ("publish", "subscribe", "count", "room_size", "replay")
INSTALL = "pip install 'aiohttp-session-sockets[metrics]'"
_now = time.perf_counter_ns


class Probe:
    """The hooks the hub, the transport and sockets call; these do nothing (metrics off).

    On the path of every message even a call that does nothing costs a Python frame (about
    1% of an echo), so there the callers ask first: a socket copies `on` when it is
    accepted (`Socket._counting`); while it is set, the transport and the socket count the
    socket's frames and bytes themselves, and time each event for `handled`.
    """

    __slots__ = ()

    on = False

    def handled(self, event: str, began: int) -> None:
        """An event's handler returned (its ack, if any, follows); `began`: perf_counter_ns()
        before it ran."""

    def failed(self, event: str | None, outcome: str, began: int) -> None:
        """An event (None: a frame that was no event) was answered with the error `outcome`
        (began 0: refused before any handler ran)."""

    def accepted(self) -> None:
        """An upgrade was accepted."""

    def refused(self, reason: str | int) -> None:
        """An upgrade was refused: `reason` is one of a few fixed strings, or the close code
        the socket was accepted and closed with."""

    def closed(self, socket: Socket) -> None:
        """An accepted socket's connection ended (`socket.close_code` says how); called
        as it leaves `hub.sockets`, so that its frames are counted once."""

    def requested(self) -> None:
        """A server request was sent to a client."""

    def request_timed_out(self) -> None:
        """A server request got no answer in time."""


NO_METRICS = Probe()


class _Event:
    """The counts of one event name: outcomes, and handler latency by BUCKET_BITS."""

    __slots__ = ("name", "outcomes", "timed_failures", "buckets", "ns")

    def __init__(self, name: str) -> None:
        self.name = name
        self.outcomes: dict[str, int] = {}  # the errors; `ok` is what the buckets hold besides
        self.timed_failures = 0  # errors of a handler that ran (they are in the buckets too)
        self.buckets = [0] * 64  # durations in ns by their bit_length: [k] holds 2**(k-1) <= ns < 2**k
        self.ns = 0  # their sum

    @property
    def ok(self) -> int:
        return sum(self.buckets) - self.timed_failures


class Metrics(Probe):
    """The hooks that count, and the collector that reports the counts to Prometheus."""

    __slots__ = ("hub", "registry", "frames_in", "bytes_in", "frames_out", "bytes_out", "events",
                 "upgrades", "refusals", "closes", "requests", "request_timeouts")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # Frames and bytes of the sockets that closed; open ones count their own (Socket).
        self.frames_in = self.bytes_in = self.frames_out = self.bytes_out = 0
        # Registered event names (and "unknown") -> their counts; never a name without a handler.
        self.events: dict[str | None, _Event] = {UNKNOWN: _Event(UNKNOWN)}
        self.upgrades = 0
        self.refusals: dict[str, int] = {}
        self.closes: dict[tuple[str, str], int] = {}  # (code, who closed) -> count
        self.requests = self.request_timeouts = 0
        self.registry = _registry(self)

    # -- hooks (hot: plain arithmetic only) ------------------------------------------------

    on = True

    def handled(self, event: str, began: int) -> None:
        # The path of every message: kept to a few bytecodes (bench (n)).
        took = _now() - began
        row = self.events.get(event) or self._row(event)
        row.buckets[took.bit_length()] += 1  # an ok is counted there only
        row.ns += took

    def failed(self, event: str | None, outcome: str, began: int) -> None:
        row = self.events.get(event) or self._row(event)
        row.outcomes[outcome] = row.outcomes.get(outcome, 0) + 1
        if began:
            took = _now() - began
            row.buckets[took.bit_length()] += 1
            row.ns += took
            row.timed_failures += 1

    def _row(self, event: str | None) -> _Event:
        if event is None or event not in self.hub._handlers:
            return self.events[UNKNOWN]  # not remembered by name: clients choose those names
        row = self.events[event] = _Event(event)
        return row

    def accepted(self) -> None:
        self.upgrades += 1

    def refused(self, reason: str | int) -> None:
        if not isinstance(reason, str):
            reason = _code_name(reason)
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def closed(self, socket: Socket) -> None:
        self.frames_in += socket._frames_in
        self.bytes_in += socket._bytes_in
        self.frames_out += socket._frames_out
        self.bytes_out += socket._bytes_out
        code = socket.close_code
        key = (str(code) if code in NAMED_CODES else "none" if code is None else "other",
               "client" if socket.close_reason is None else "server")
        self.closes[key] = self.closes.get(key, 0) + 1

    def requested(self) -> None:
        self.requests += 1

    def request_timed_out(self) -> None:
        self.request_timeouts += 1

    # -- the collector (at scrape time) --------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Every series of this hub, as Prometheus families (called by the registry)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        def family(kind: type[Any], name: str, doc: str, labels: tuple[str, ...] = (),
                   values: Mapping[Any, float] | float = 0) -> Metric:
            out = kind(PREFIX + name, doc, labels=labels)
            if isinstance(values, Mapping):
                for key, value in sorted(values.items()):
                    out.add_metric(key if isinstance(key, tuple) else (key,), value)
            else:
                out.add_metric((), values)
            return out  # type: ignore[no-any-return]

        counter = functools.partial(family, CounterMetricFamily)
        gauge = functools.partial(family, GaugeMetricFamily)

        hub = self.hub
        storage = _storage(hub)
        open_ = {(storage, "true"): 0, (storage, "false"): 0}
        for socket in hub.sockets.values():
            open_[(storage, "false" if socket.user is None else "true")] += 1
        yield gauge("open", "Open sockets.", ("storage", "authenticated"), open_)
        yield counter("upgrades_accepted", "Websocket upgrades accepted.", values=self.upgrades)
        yield counter("upgrades_refused", "Websocket upgrades refused, by reason.", ("reason",),
                      {**dict.fromkeys(REFUSALS, 0), **self.refusals})
        for name in list(hub._handlers):
            if name not in self.events:
                self._row(name)  # a registered event shows `ok 0` before its first call
        rows = sorted(self.events.values(), key=lambda row: row.name)
        outcomes = {(row.name, outcome): count for row in rows
                    for outcome, count in (("ok", row.ok), *row.outcomes.items()) if count or row.name != UNKNOWN}
        yield counter("events", "Frames answered, by event (registered handlers; else unknown) and outcome "
                                "(ok, or the error code).", ("event", "outcome"), outcomes)
        latency = HistogramMetricFamily(PREFIX + "event_duration_seconds",
                                        "Time from an event's dispatch to its handler's return.", labels=("event",))
        for row in rows:
            if any(row.buckets):
                below = list(itertools.accumulate(row.buckets))  # below[k]: durations < 2**k ns
                buckets = [(repr(2 ** k / 1e9), below[k]) for k in BUCKET_BITS] + [("+Inf", below[-1])]
                latency.add_metric((row.name,), buckets, row.ns / 1e9)
        yield latency
        yield counter("closes", "Socket connections ended, by close code and by who closed.",
                      ("code", "by"), {(str(int(CloseCode.TOO_SLOW)), "server"): 0, **self.closes})
        sockets = list(hub.sockets.values())
        yield counter("frames_received", "Data frames read from clients.",
                      values=self.frames_in + sum(s._frames_in for s in sockets))
        yield counter("received_bytes", "Payload of the data frames read (text frames: characters).",
                      values=self.bytes_in + sum(s._bytes_in for s in sockets))
        yield counter("frames_sent", "Frames sent to clients.",
                      values=self.frames_out + sum(s._frames_out for s in sockets))
        yield counter("sent_bytes", "Payload of the frames sent.", values=self.bytes_out + sum(s._bytes_out for s in sockets))
        yield counter("server_requests", "Server requests sent to clients (socket.request).", values=self.requests)
        yield counter("server_request_timeouts", "Server requests the client did not answer in time.",
                      values=self.request_timeouts)
        backplane = hub.backplane
        yield gauge("backplane_up", "1 while messages reach every process.", values=int(backplane.healthy))
        yield counter("backplane_published", "Messages (emits, disconnects) published through the backplane.",
                      values=backplane.published)
        yield counter("backplane_received", "Messages received from other processes.", values=backplane.received)
        yield counter("backplane_errors", "Backplane operations that failed, by operation.", ("op",),
                      {**dict.fromkeys(BACKPLANE_OPS, 0), **backplane.errors})
        yield counter("store_errors", "Session store operations that failed, by operation.", ("op",),
                      {**dict.fromkeys(STORE_OPS, 0), **hub.sessions.errors})
        cache = hub.sessions.cache if isinstance(hub.sessions, RedisSessionBridge) else None
        if cache is not None:
            yield counter("tracking_cache_hits", "Session reads answered from the tracking cache.", values=cache.hits)
            yield counter("tracking_cache_misses", "Session reads that went to Redis.", values=cache.misses)
            yield counter("tracking_cache_flushes", "Times the whole tracking cache was dropped.",
                          values=cache.flushes)
            yield gauge("tracking_cache_entries", "Keys in the tracking cache.", values=len(cache))
        rooms: dict[str, float] = {"public": 0, "session": 0, "user": 0}
        members: dict[str, float] = dict(rooms)
        for room, count in hub.rooms.sizes():
            kind = _kind(room)
            rooms[kind] += 1
            members[kind] += count
        yield gauge("rooms", "Rooms with a socket of this process, by kind.", ("kind",), rooms)
        yield gauge("room_members", "Memberships of this process's sockets, by kind of room.", ("kind",), members)

    def scrape(self) -> bytes:
        """This process's series in the Prometheus text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _registry(metrics: Metrics) -> CollectorRegistry:
    # A registry of the app's own: tests (and apps) make many hubs in one process.
    try:
        from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
    except ImportError:
        raise ImportError(f"metrics need prometheus_client: {INSTALL}") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    ProcessCollector(registry=registry)  # CPU seconds, memory, open files of this process
    GCCollector(registry=registry)
    return registry


def _storage(hub: Hub) -> str:
    return "redis" if isinstance(hub.sessions, RedisSessionBridge) else "cookie"


def _code_name(code: int) -> str:
    # A connect middleware may close with a code of its own: named only if it has a name here.
    try:
        return CloseCode(code).name.lower()
    except ValueError:
        return "other"


def _kind(room: str) -> str:
    if room.startswith("session:"):
        return "session"
    if room.startswith("user:"):
        return "user"
    return "public"


METRICS = web.AppKey("session_sockets_metrics", Metrics)


def expose_metrics(app: web.Application, hub: Hub, *, path: str = "/metrics", port: int | None = None,
                   host: str = "127.0.0.1") -> Metrics:
    """Count what `hub` does and serve it at `GET path` in the Prometheus text format.

    Args:
        port: serve it on a listener of its own at `host:port` (from the app's start-up to
            its cleanup) instead of on the app's routes: the app's port may face the world.

    Raises:
        ImportError: prometheus_client is not installed.
    """
    metrics = Metrics(hub)
    hub.metrics = metrics
    app[METRICS] = metrics

    async def serve(request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return web.Response(body=metrics.scrape(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    if port is None:
        app.router.add_get(path, serve)
        return metrics

    async def listener(app: web.Application) -> AsyncIterator[None]:
        own = web.Application()
        own.router.add_get(path, serve)
        runner = web.AppRunner(own, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        yield
        await runner.cleanup()

    app.cleanup_ctx.append(listener)
    return metrics
