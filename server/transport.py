"""The aiohttp websocket endpoint: Origin check, upgrade, read loop, and the ONE place
where errors become wire frames and close codes (protocol.md, "Errors").

Each socket's events are handled one at a time, in arrival order, by a task of its own,
while the read loop goes on reading: so a handler can await `socket.request()` (the ack
comes through the read loop) and acks to server requests are never stuck behind events.
Errors about bad frames go through the same queue, so a client gets its answers in the
order it sent the frames (protocol.md, "Ordering").
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from .codes import CloseCode, ErrorCode
from .errors import BadFrame, CloseConnection, RateLimited, ReplyError, SocketClosed, Unavailable
from .http_errors import json_error
from .hub import Hub
from .protocol import Ack, Event, encode_ack, parse_frame
from .sockets import Socket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransportSettings:
    """Limits of one websocket (protocol.md, "Limits")."""

    max_message_size: int = 1 << 20
    heartbeat: float | None = 25.0
    # Origins allowed besides the request's own (exact "scheme://host[:port]" strings).
    allowed_origins: frozenset[str] = field(default_factory=frozenset)
    # Bytes waiting to be sent to a client past which it is closed with 4408.
    send_limit: int = 1 << 20
    close_timeout: float = 5.0
    # Events read but not yet handled; past it the read loop waits (TCP backpressure).
    inbox_size: int = 64
    # How long a closing socket's running handler may take to finish.
    handler_grace: float = 5.0
    # Events per second per socket (bursts of twice that); 0 means no limit.
    rate_limit: float = 0.0


def origin_allowed(request: web.Request, allowed: frozenset[str]) -> bool:
    """The brief's Origin rule: none (not a browser), the page's own, or an allowed one."""
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}" or origin in allowed


class WebSocketEndpoint:
    """The `GET /ws` handler: `app.router.add_get("/ws", WebSocketEndpoint(hub).upgrade)`."""

    def __init__(self, hub: Hub, settings: TransportSettings | None = None) -> None:
        self.hub = hub
        self.settings = settings or TransportSettings()

    async def upgrade(self, request: web.Request) -> web.StreamResponse:
        """Upgrade to a websocket and serve it until it closes."""
        settings = self.settings
        if not origin_allowed(request, settings.allowed_origins):
            log.info("refused upgrade from %s: origin %r is not allowed", request.remote,
                     request.headers.get("Origin"))
            raise json_error(web.HTTPForbidden, "forbidden_origin", "this origin may not open a socket here")
        ws = web.WebSocketResponse(
            max_msg_size=settings.max_message_size + 1,  # aiohttp refuses sizes >= its limit
            heartbeat=settings.heartbeat,
            compress=False,  # small JSON frames: compression costs CPU once per recipient
            timeout=settings.close_timeout,
        )
        if not ws.can_prepare(request).ok:
            raise json_error(web.HTTPBadRequest, "bad_request", "expected a websocket upgrade")
        try:
            handle = await self.hub.sessions.open(request)
        except Unavailable as exc:
            log.warning("refused upgrade from %s: session store unavailable", request.remote)
            raise json_error(web.HTTPServiceUnavailable, "unavailable", exc.message) from None

        socket = Socket(self.hub, request, handle)
        try:
            await self.hub.admit(socket)
        except CloseConnection as exc:
            # Accept, then close: only so can a browser read the code and reason.
            await ws.prepare(request)
            log.info("refused socket from %s: %s (%d)", request.remote, exc.reason, exc.code)
            await ws.close(code=exc.code, message=exc.reason.encode())
            return ws

        await ws.prepare(request)
        socket.attach(ws, settings.send_limit, asyncio.current_task().cancel)  # type: ignore[union-attr]
        await socket.emit("connected", {"socket": socket.id, "user": socket.user})
        await self.hub.add(socket)
        log.info("socket %s connected: user %s from %s", socket.id,
                 socket.user and socket.user.get("id"), request.remote)
        inbox = _Inbox(self, socket, settings.inbox_size)
        try:
            await self._read(socket, ws, inbox)
            socket.detach()
            if socket.close_reason is not None:
                await self._close(socket, ws)
        finally:
            socket.detach()
            _abort(request)
            socket.connection_lost(ws.close_code)
            await self.hub.remove(socket)
            await inbox.stop(settings.handler_grace)
            log.info("socket %s closed: code %s", socket.id, socket.close_code)
        return ws

    async def _read(self, socket: Socket, ws: web.WebSocketResponse, inbox: _Inbox) -> None:
        try:
            await self._read_frames(socket, ws, inbox)
        except asyncio.CancelledError:
            if socket.close_reason is None:
                raise  # not `socket.close()`: the server is stopping this task
            asyncio.current_task().uncancel()  # type: ignore[union-attr]

    async def _close(self, socket: Socket, ws: web.WebSocketResponse) -> None:
        """The closing handshake the server started: send the close, wait for the answer."""
        reason = (socket.close_reason or "").encode()[:123]  # a close frame holds 125 bytes
        try:
            await asyncio.wait_for(ws.close(code=socket.close_code or CloseCode.NORMAL, message=reason),
                                   self.settings.close_timeout)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass

    async def _read_frames(self, socket: Socket, ws: web.WebSocketResponse, inbox: _Inbox) -> None:
        rate = self.settings.rate_limit
        tokens = burst = 2 * rate
        last = time.monotonic()
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                try:
                    frame = parse_frame(msg.data)
                except BadFrame as exc:
                    await inbox.put(exc)
                    continue
                if type(frame) is Ack:
                    if not socket.resolve(frame):
                        await inbox.put(BadFrame(
                            f"no server request {frame.ack} is waiting for an answer (it may have timed out)"))
                    continue
                if rate:
                    now = time.monotonic()
                    tokens = min(burst, tokens + (now - last) * rate)
                    last = now
                    if tokens < 1:
                        await inbox.put(RateLimited(f"more than {rate:g} events per second; slow down",
                                                    id=frame.id))
                        continue
                    tokens -= 1
                await inbox.put(frame)
            elif msg.type is WSMsgType.BINARY:
                await inbox.put(BadFrame("binary frames are not accepted: send JSON text frames"))
            elif msg.type is WSMsgType.ERROR:
                code = getattr(msg.data, "code", None)
                if code == CloseCode.MESSAGE_TOO_BIG:
                    socket.close_code = code
                return
            else:  # CLOSE, CLOSING, CLOSED
                return

    async def run_event(self, socket: Socket, event: Event) -> None:
        """Run one event and answer it: the one place errors become frames or closes."""
        try:
            result = await self.hub.dispatch(socket, event)
            if event.id is not None:
                await socket.send_frame(encode_ack(event.id, result))
        except ReplyError as exc:
            await socket.send_error(exc.code, exc.message, event.id)
        except CloseConnection as exc:
            log.info("closing socket %s: %s (%d)", socket.id, exc.reason, exc.code)
            socket.close_soon(exc.code, exc.reason)
        except SocketClosed:
            pass
        except Exception:
            log.exception("handler of %r failed on socket %s", event.event, socket.id)
            await socket.send_error(ErrorCode.INTERNAL, "the server failed to handle this event", event.id)


def _abort(request: web.Request) -> None:
    # A client that never answers the close, or never reads, must not keep its buffer alive.
    if request.transport is not None and not request.transport.is_closing():
        request.transport.abort()


class _Inbox:
    """One socket's events (and errors about its bad frames), answered in order by one task."""

    def __init__(self, endpoint: WebSocketEndpoint, socket: Socket, size: int) -> None:
        self._endpoint = endpoint
        self._socket = socket
        self._queue: asyncio.Queue[Event | ReplyError] = asyncio.Queue(size)
        self._busy = False
        self._task = asyncio.create_task(self._run())

    async def put(self, item: Event | ReplyError) -> None:
        await self._queue.put(item)

    async def _run(self) -> None:
        socket = self._socket
        while True:
            item = await self._queue.get()
            if socket.closed:
                return  # a closed socket's queued events are dropped, never run
            if type(item) is not Event:
                await socket.send_error(item.code, item.message, item.id)
                continue
            self._busy = True
            try:
                await self._endpoint.run_event(socket, item)
            finally:
                self._busy = False
            if socket.closed:
                return

    async def stop(self, grace: float) -> None:
        """Let a running handler finish (at most `grace` seconds), drop the rest."""
        if self._busy:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        self._task.cancel()
