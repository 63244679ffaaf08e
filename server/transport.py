"""The aiohttp websocket endpoint: Origin check, upgrade, read loop, and the ONE place
where errors become wire frames and close codes (protocol.md, "Errors").

Each socket's frames are answered one at a time, in arrival order, errors included, so a
client gets its answers in the order it sent the frames (protocol.md, "Ordering"). Events
run in the task that reads them, which costs no task switch per message; the first time
a handler waits for the client (`socket.request()`), reading moves to a task of its own
so that the client's answer can be read (`_Connection`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMessage, WSMsgType, web

from .codes import CloseCode, ErrorCode
from .errors import BadFrame, CloseConnection, ReplyError, SocketClosed, Unavailable
from .http_errors import is_websocket_upgrade, json_error
from .hub import Hub
from .limits import ReadBudget
from .origins import origin_allowed
from .protocol import Ack, Event, encode_ack, parse_frame
from .sockets import Socket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransportSettings:
    """Limits of one websocket (protocol.md, "Limits")."""

    max_message_size: int = 1 << 16
    heartbeat: float | None = 25.0
    # Origins allowed besides the request's own (exact "scheme://host[:port]" strings).
    allowed_origins: frozenset[str] = field(default_factory=frozenset)
    # Bytes waiting to be sent to a client past which it is closed with 4408.
    send_limit: int = 1 << 20
    close_timeout: float = 5.0
    # Events read but not yet handled, in frames and in bytes; past either the read loop
    # waits (TCP backpressure), or, while a handler waits for the client's answer, answers
    # further events with `rate_limited` so that the answer can still be read.
    inbox_size: int = 64
    inbox_bytes: int = 256 << 10
    # How long a closing socket's running handler may take to finish.
    handler_grace: float = 5.0
    # How fast a socket's frames are read: events and bytes per second (bursts of twice
    # that); a user's sockets share USER_SHARE times that. 0 means no limit.
    rate_limit: float = 100.0
    rate_limit_bytes: float = 64 << 10
    # Sockets one user may have open in this process, and rooms one socket may join.
    max_sockets_per_user: int = 5000


# How many sockets' worth of reading a user's sockets share: a user with a few tabs open
# never notices, one with hundreds reads no faster than USER_SHARE of them.
USER_SHARE = 4
_MAX_USERS = 10_000


class _User:
    """What one user's sockets in this process share: a count, and a read budget."""

    __slots__ = ("sockets", "budget")

    def __init__(self, settings: TransportSettings) -> None:
        self.sockets = 0
        self.budget = ReadBudget(USER_SHARE * settings.rate_limit, USER_SHARE * settings.rate_limit_bytes)


class WebSocketEndpoint:
    """The `GET /ws` handler: `app.router.add_get("/ws", WebSocketEndpoint(hub).upgrade)`."""

    def __init__(self, hub: Hub, settings: TransportSettings | None = None) -> None:
        self.hub = hub
        self.settings = settings or TransportSettings()
        self._users: dict[Any, _User] = {}
        _raise_mmap_threshold()

    async def upgrade(self, request: web.Request) -> web.StreamResponse:
        """Upgrade to a websocket and serve it until it closes."""
        settings = self.settings
        if not origin_allowed(request, settings.allowed_origins):
            self.hub.metrics.refused("forbidden_origin")
            log.info("refused upgrade from %s: origin %r is not allowed", request.remote,
                     request.headers.get("Origin"), extra={"remote": request.remote, "code": 403})
            raise json_error(web.HTTPForbidden, "forbidden_origin", "this origin may not open a socket here")
        ws = web.WebSocketResponse(
            max_msg_size=settings.max_message_size + 1,  # aiohttp refuses sizes >= its limit
            heartbeat=settings.heartbeat,
            compress=False,  # small JSON frames: compression costs CPU once per recipient
            timeout=settings.close_timeout,
        )
        if not is_websocket_upgrade(request):  # the rest is checked by prepare()
            self.hub.metrics.refused("bad_request")
            raise json_error(web.HTTPBadRequest, "bad_request", "expected a websocket upgrade")
        try:
            handle = await self.hub.sessions.open(request)
        except Unavailable as exc:
            # Info, not a warning: the cause is logged once per outage by the Redis link.
            self.hub.metrics.refused("unavailable")
            log.info("refused upgrade from %s: session store unavailable", request.remote,
                     extra={"remote": request.remote, "code": 503})
            raise json_error(web.HTTPServiceUnavailable, "unavailable", exc.message) from None

        socket = Socket(self.hub, request, handle)
        try:
            await self.hub._admit(socket)
        except CloseConnection as exc:
            # Accept, then close: only so can a browser read the code and reason.
            self.hub.metrics.refused(exc.code)
            await ws.prepare(request)
            log.info("refused socket from %s: %s (%d)", request.remote, exc.reason, exc.code,
                     extra={"remote": request.remote, "code": exc.code, "reason": exc.reason})
            await ws.close(code=exc.code, message=exc.reason.encode())
            return ws

        user = self._user(_user_key(socket))
        if user.sockets >= settings.max_sockets_per_user:
            self.hub.metrics.refused(CloseCode.TOO_MANY_SOCKETS)
            await ws.prepare(request)
            log.info("refused socket from %s: user %s has %d sockets open", request.remote,
                     socket.user and socket.user.get("id"), user.sockets,
                     extra={"remote": request.remote, "user": socket.user and socket.user.get("id"),
                            "code": int(CloseCode.TOO_MANY_SOCKETS)})
            await ws.close(code=CloseCode.TOO_MANY_SOCKETS, message=b"too many sockets for this user")
            return ws
        # Served here, not in a coroutine of its own: every frame on this task's stack stays
        # alive as long as the socket does.
        user.sockets += 1
        try:
            await ws.prepare(request)
            connection = _Connection(self, socket, ws, user.budget)
            socket._attach(ws, settings.send_limit, connection)
            await self.hub._add(socket)
            self.hub.metrics.accepted()
            await socket.emit("connected", {"socket": socket.id, "user": socket.user})
            await self.hub._accepted(socket)
            log.info("socket %s connected: user %s from %s", socket.id,
                     socket.user and socket.user.get("id"), request.remote,
                     extra={"socket": socket.id, "user": socket.user and socket.user.get("id"),
                            "remote": request.remote})
            try:
                await connection.serve()
                socket._detach()
                await connection.close()
            finally:
                socket._detach()
                _abort(request)
                socket._connection_lost(ws.close_code)
                await self.hub._remove(socket)
                await connection.stop()
                log.info("socket %s closed: code %s", socket.id, socket.close_code,
                         extra={"socket": socket.id, "user": socket.user and socket.user.get("id"),
                                "code": socket.close_code, "reason": socket.close_reason})
        finally:
            user.sockets -= 1
        return ws

    def _user(self, key: Any) -> _User:
        # A user's budget outlives their sockets: reconnecting must not refill it. Users with
        # no socket and a full budget are forgotten when there are many.
        user = self._users.get(key)
        if user is None:
            if len(self._users) >= _MAX_USERS:
                now = time.monotonic()
                for gone in [k for k, u in self._users.items() if not u.sockets and u.budget.full(now)]:
                    del self._users[gone]
            user = self._users[key] = _User(self.settings)
        return user

    async def run_event(self, socket: Socket, event: Event) -> None:
        """Run one event and answer it: the one place errors become frames or closes."""
        began = time.perf_counter_ns() if socket._counting else 0
        try:
            result = await self.hub.dispatch(socket, event)
            if began:
                self.hub.metrics.handled(event.event, began)
            if event.id is not None:
                await socket.send_frame(encode_ack(event.id, result))
        except ReplyError as exc:
            self.hub.metrics.failed(event.event, exc.code.value, began)
            await socket.send_error(exc.code, exc.message, event.id)
        except CloseConnection as exc:
            self.hub.metrics.failed(event.event, "closed", began)
            log.info("closing socket %s: %s (%d)", socket.id, exc.reason, exc.code,
                     extra={"socket": socket.id, "code": exc.code, "reason": exc.reason})
            socket.close_soon(exc.code, exc.reason)
        except SocketClosed:
            self.hub.metrics.failed(event.event, "socket_closed", began)
        except Exception:
            self.hub.metrics.failed(event.event, ErrorCode.INTERNAL.value, began)
            log.exception("handler of %r failed on socket %s", event.event, socket.id,
                          extra={"socket": socket.id, "event": event.event})
            await socket.send_error(ErrorCode.INTERNAL, "the server failed to handle this event", event.id)


# What parsing a frame costs is its length plus, far more, the lists and objects it makes
# (a 64 KiB frame of `[[],[],...]` takes 10 to 15 ms to parse): each counts as this many
# bytes of the read budget. Counting brackets is a C loop over the text, ~1% of parsing it.
_CONTAINER_COST = 16


def _cost(text: str) -> int:
    return len(text) + _CONTAINER_COST * (text.count("[") + text.count("{"))


def _user_key(socket: Socket) -> Any:
    if socket.user is not None:
        return ("user", socket.user.get("id"))
    return ("socket", socket.id)  # anonymous sockets (a connect middleware let them in) share nothing


def _raise_mmap_threshold() -> None:
    # asyncio reads every socket into a new 256 KiB buffer. glibc's malloc serves that size
    # with mmap (and gives it back with munmap) until the process has freed a larger mmapped
    # block, which raises its threshold: about 14 us per frame of kernel time otherwise
    # (bench/RESULTS.md, "Allocator"). A no-op on other allocators.
    block = bytearray(16 << 20)
    del block


def _abort(request: web.Request) -> None:
    # A client that never answers the close, or never reads, must not keep its buffer alive.
    if request.transport is not None and not request.transport.is_closing():
        request.transport.abort()


class _Connection:
    """One open socket's frames: read, answered in order, and closed.

    Events run in the task that reads them, one at a time: no task switch per message. A
    handler that waits for the client's answer (`socket.request()`) needs frames read while
    it waits, so the first such request hands reading to a task of its own, and from then
    on that task queues the frames for the handler's task (an inbox), still in order.
    """

    __slots__ = ("endpoint", "settings", "socket", "ws", "task", "receiving", "handling", "reader", "inbox",
                 "budget", "user_budget", "paced")

    def __init__(self, endpoint: WebSocketEndpoint, socket: Socket, ws: web.WebSocketResponse,
                 user_budget: ReadBudget) -> None:
        self.endpoint = endpoint
        self.settings = settings = endpoint.settings
        self.socket = socket
        self.ws = ws
        self.task = asyncio.current_task()  # the upgrade's task: it runs the events
        self.receiving = False  # the task waits in `ws.receive()` or for its budget (so it may be cancelled)
        self.handling = False  # the task runs a handler
        self.reader: asyncio.Task[None] | None = None  # the task that reads, once handed over
        self.inbox: _Inbox | None = None
        self.budget = ReadBudget(settings.rate_limit, settings.rate_limit_bytes)
        self.user_budget = user_budget
        self.paced = settings.rate_limit > 0 or settings.rate_limit_bytes > 0

    # -- called by the socket ----------------------------------------------------------

    def interrupt(self) -> None:
        """The socket must close: at once if no handler runs, else once it has finished
        (it is stopped after `handler_grace` seconds). Its sends fail from now on, and its
        server requests at once, so a handler rarely makes the close wait."""
        if self.reader is not None:
            self.reader.cancel()
        elif self.receiving:
            self.task.cancel()  # type: ignore[union-attr]
            return
        asyncio.get_running_loop().call_later(self.settings.handler_grace, self._stop_handler)

    def read_while_waiting(self) -> None:
        # Only needed while the reading task is busy with a handler (which may be the one
        # waiting, or may be waiting for it).
        if self.reader is None and self.handling:
            self.inbox = _Inbox(self.settings.inbox_size, self.settings.inbox_bytes)
            self.reader = asyncio.create_task(self._read_into_inbox())
        elif self.inbox is not None:
            self.inbox.poke()  # a reader waiting for room must read on: the answer may come next

    # -- the upgrade's task ------------------------------------------------------------

    async def serve(self) -> None:
        """Read and answer frames until the socket closes or must close.

        Frames are read and run here until the socket closes or reading is handed over to
        a task of its own; then the events it queues are run here.
        """
        ws, socket = self.ws, self.socket
        try:
            # The read loop is here, not in a coroutine of its own: an idle socket keeps
            # every frame of this stack alive.
            while self.reader is None and not socket.closed:
                self.receiving = True
                try:
                    msg = await ws.receive()
                    await self._pace(msg)
                finally:
                    self.receiving = False
                item = self._accept(msg)
                del msg  # an idle socket must not keep its last frame (and what it parsed into) alive
                if item is None:
                    continue
                if item is _CLOSED:
                    return
                await self._answer(item)  # type: ignore[arg-type]
                del item
            if self.reader is not None:
                await self._work()
        except asyncio.CancelledError:
            if self.socket.close_reason is None:
                raise  # not `socket.close()`: the server is stopping this task
            asyncio.current_task().uncancel()  # type: ignore[union-attr]

    async def close(self) -> None:
        """The closing handshake the server started: send the close, wait for the answer."""
        socket = self.socket
        if socket.close_reason is None:
            return  # the client closed, or went away
        reason = socket.close_reason.encode()[:123]  # a close frame holds 125 bytes
        try:
            await asyncio.wait_for(self.ws.close(code=socket.close_code or CloseCode.NORMAL, message=reason),
                                   self.settings.close_timeout)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass

    async def stop(self) -> None:
        """Stop the reading task, if there is one."""
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)

    def _stop_handler(self) -> None:
        if self.handling:
            self.task.cancel()  # type: ignore[union-attr]

    async def _read_into_inbox(self) -> None:
        inbox = self.inbox
        assert inbox is not None
        socket = self.socket
        try:
            while True:
                msg = await self.ws.receive()
                await self._pace(msg)
                item = self._accept(msg)  # an answer to a server request is taken here, at once
                if item is _CLOSED:
                    # The handler waiting for the client's answer must learn it now, not
                    # when its request times out: until it ends, the socket stays in its rooms.
                    socket._connection_lost(self.ws.close_code)
                    return
                if item is None:
                    continue
                size = len(msg.data)
                del msg
                while inbox.full():
                    if socket.waiting_for_client:
                        # Stopping to read would keep the client's answer unread: this
                        # event is refused instead, and the inbox stays within its bytes.
                        await self._refuse(item)  # type: ignore[arg-type]
                        break
                    await inbox.wait_for_room()
                else:
                    inbox.put(item, size)  # type: ignore[arg-type]
                del item
        finally:
            inbox.close()  # the events' task stops; what the inbox holds is dropped with the socket

    async def _work(self) -> None:
        """Run the events the reading task queued, until it stops."""
        assert self.inbox is not None
        socket = self.socket
        while True:
            item = await self.inbox.get()
            if item is None or socket.closed:
                return  # a closed socket's queued events are dropped, never run
            await self._answer(item)

    async def _answer(self, item: Event | ReplyError) -> None:
        if type(item) is Event:
            self.handling = True
            try:
                await self.endpoint.run_event(self.socket, item)
            finally:
                self.handling = False
        else:
            self.endpoint.hub.metrics.failed(None, item.code.value, 0)  # type: ignore[union-attr]
            await self.socket.send_error(item.code, item.message, item.id)  # type: ignore[union-attr]

    async def _pace(self, msg: WSMessage) -> None:
        """Wait, before parsing, until this socket and its user may read another frame."""
        if not self.paced:
            return
        if msg.type is WSMsgType.TEXT:
            cost = _cost(msg.data)
        elif msg.type is WSMsgType.BINARY:
            cost = len(msg.data)  # refused unparsed, but answering it costs as much as an event
        else:
            return
        now = time.monotonic()
        wait = max(self.budget.charge(cost, now), self.user_budget.charge(cost, now))
        if wait:
            await asyncio.sleep(wait)  # meanwhile TCP holds the client back

    async def _refuse(self, item: Event | ReplyError) -> None:
        if type(item) is Event:
            self.endpoint.hub.metrics.failed(item.event, ErrorCode.RATE_LIMITED.value, 0)
            await self.socket.send_error(ErrorCode.RATE_LIMITED, "too many events wait for a handler that waits "
                                         "for your answer; send this one again later", item.id)
        else:
            self.endpoint.hub.metrics.failed(None, item.code.value, 0)  # type: ignore[union-attr]
            await self.socket.send_error(item.code, item.message, item.id)  # type: ignore[union-attr]

    def _accept(self, msg: WSMessage) -> Event | ReplyError | object | None:
        """What a received message asks for: an event or an error to answer, _CLOSED, or None."""
        socket = self.socket
        if msg.type is WSMsgType.TEXT:
            if socket._counting:  # counted on the socket: no call on the path of every frame
                socket._frames_in += 1
                socket._bytes_in += len(msg.data)
            try:
                frame = parse_frame(msg.data)
            except BadFrame as exc:
                return exc
            if type(frame) is Ack:
                if socket._resolve(frame):
                    return None
                return BadFrame(f"no server request {frame.ack} is waiting for an answer (it may have timed out)")
            return frame
        if msg.type is WSMsgType.BINARY:
            if socket._counting:  # counted on the socket: no call on the path of every frame
                socket._frames_in += 1
                socket._bytes_in += len(msg.data)
            return BadFrame("binary frames are not accepted: send JSON text frames")
        if msg.type is WSMsgType.ERROR:
            if getattr(msg.data, "code", None) == CloseCode.MESSAGE_TOO_BIG:
                socket.close_code = CloseCode.MESSAGE_TOO_BIG
        return _CLOSED  # ERROR, CLOSE, CLOSING, CLOSED


_CLOSED = object()


class _Inbox:
    """Events read but not yet handled, in order, bounded in frames and in bytes."""

    def __init__(self, frames: int, size: int) -> None:
        self._items: deque[tuple[Event | ReplyError | None, int]] = deque()
        self._frames = frames
        self._size = size
        self._bytes = 0
        self._ready = asyncio.Event()  # something to take
        self._room = asyncio.Event()  # something was taken, or the reader must look again

    def full(self) -> bool:
        return len(self._items) >= self._frames or self._bytes >= self._size

    def put(self, item: Event | ReplyError, size: int) -> None:
        self._items.append((item, size))
        self._bytes += size
        self._ready.set()

    def close(self) -> None:
        """The end mark: `get` returns None once it is reached."""
        self._items.append((None, 0))
        self._ready.set()

    async def get(self) -> Event | ReplyError | None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item, size = self._items.popleft()
        self._bytes -= size
        self._room.set()
        return item

    async def wait_for_room(self) -> None:
        self._room.clear()
        await self._room.wait()

    def poke(self) -> None:
        self._room.set()
