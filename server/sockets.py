"""One connected websocket as handlers see it: identity, session, rooms, sends, requests."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

from aiohttp import WSMsgType, web

from .codes import CloseCode, ErrorCode
from .errors import LoggedOut, RequestFailed, RequestTimeout, SocketClosed
from .history import Joined, Position
from .protocol import Ack, encode_error, encode_error_ack, encode_event
from .sessions import SessionHandle

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger(__name__)

T = TypeVar("T")


class Reader(Protocol):
    """What the transport gives a socket to reach its read loop."""

    def interrupt(self) -> None:
        """Stop reading and close the socket (a running handler may finish)."""

    def read_while_waiting(self) -> None:
        """A handler waits for the client's answer: frames must be read meanwhile."""


class Socket:
    """A connected client. Handlers get it as their first argument."""

    __slots__ = (
        "id", "hub", "http_request", "handle", "user", "close_code",
        "close_reason", "_ws", "_transport", "_send_limit", "_reader", "_last_request_id",
        "_pending", "_closing", "_counting", "_frames_in", "_bytes_in", "_frames_out", "_bytes_out",
        "__weakref__",
    )

    def __init__(self, hub: Hub, request: web.Request, handle: SessionHandle) -> None:
        self.id = secrets.token_urlsafe(12)
        self.hub = hub
        self.http_request = request  # the upgrade request
        self.handle = handle
        # The public user object {"id", "name"} the session was logged in as, or None.
        self.user: dict[str, Any] | None = handle.session.get("user")
        self.close_code: int | None = None
        self.close_reason: str | None = None  # set when the server decided to close
        self._ws: web.WebSocketResponse | None = None
        self._transport: asyncio.Transport | None = None
        self._send_limit = 0
        self._reader: Reader | None = None
        self._last_request_id = 0
        self._pending: dict[int, asyncio.Future[Ack]] = {}
        self._closing = False
        # Frames and bytes, counted while `_counting` (metrics are on; server/metrics.py reads them).
        self._counting: bool = hub.metrics.on
        self._frames_in = self._bytes_in = self._frames_out = self._bytes_out = 0

    def _attach(self, ws: web.WebSocketResponse, send_limit: int, reader: Reader) -> None:
        """Bind to the prepared websocket (called by the transport).

        Args:
            send_limit: the bytes that may wait to be sent before the socket is closed 4408.
            reader: what reads this socket's frames; told when the socket must close, and
                when a server request needs the client's answer read.
        """
        self._ws = ws
        self._transport = self.http_request.transport
        self._send_limit = send_limit
        self._reader = reader
        if self._transport is not None:
            # aiohttp waits for the buffer to drain past the high-water mark, which would let
            # one stuck reader hold up a broadcast; lifted to our limit, a send never waits:
            # the socket is closed with 4408 before the buffer gets there.
            self._transport.set_write_buffer_limits(high=send_limit + 1)

    @property
    def session(self) -> Any:
        """The session (a dict-like `aiohttp_session.Session`) as last loaded."""
        return self.handle.session

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def waiting_for_client(self) -> bool:
        """Whether a server request of this socket waits for the client's answer."""
        return bool(self._pending)

    @property
    def rooms(self) -> set[str]:
        """Every room the socket is in, the private session and user rooms included."""
        return set(self.hub.rooms.rooms_of(self))

    # -- sending ---------------------------------------------------------------------

    async def emit(self, event: str, data: Any = None) -> bool:
        """Send an event to this socket only; False if the socket is gone."""
        return await self.send_frame(encode_event(event, data))

    async def send_frame(self, frame: bytes) -> bool:
        """Send a serialized frame (UTF-8 JSON); False if the socket is closed or being closed."""
        transport = self._transport
        if self._closing or transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() + len(frame) > self._send_limit:
            self.close_soon(CloseCode.TOO_SLOW, "client too slow to read")
            return False
        try:
            await self._ws.send_frame(frame, WSMsgType.TEXT)  # type: ignore[union-attr]
        except (ConnectionError, RuntimeError):
            return False
        if self._counting:
            self._frames_out += 1
            self._bytes_out += len(frame)
        return True

    async def send_error(self, code: ErrorCode, message: str, id: int | None = None) -> bool:
        """Answer a frame: an error ack when it carried an `id`, else an `error` event."""
        if id is None:
            return await self.send_frame(encode_error(code, message))
        return await self.send_frame(encode_error_ack(id, code, message))

    async def request(self, event: str, data: Any = None, *, timeout: float = 10.0) -> Any:
        """Send an event with an `id` and wait for the client's ack; returns its `data`.

        Raises:
            RequestTimeout: no ack within `timeout` seconds (a handler that lets it
                propagate answers its own caller with `timeout`).
            RequestFailed: the client answered with an error ack.
            SocketClosed: the socket closed first.
        """
        self._last_request_id += 1
        id = self._last_request_id
        waiter = asyncio.get_running_loop().create_future()
        self._pending[id] = waiter
        try:
            if not await self.send_frame(encode_event(event, data, id)):
                raise SocketClosed(f"socket {self.id} is closed")
            self.hub.metrics.requested()
            if self._reader is not None:
                self._reader.read_while_waiting()
            async with asyncio.timeout(timeout):
                ack = await waiter
        except TimeoutError:
            self.hub.metrics.request_timed_out()
            raise RequestTimeout(f"the client did not answer {event!r} within {timeout:g} s") from None
        finally:
            self._pending.pop(id, None)
        if ack.error is not None:
            raise RequestFailed(ack.error["code"], ack.error["message"])
        return ack.data

    def _resolve(self, ack: Ack) -> bool:
        """Hand the client's ack to the request waiting for it; False if none is."""
        waiter = self._pending.get(ack.ack)
        if waiter is None or waiter.done():
            return False
        waiter.set_result(ack)
        return True

    # -- rooms and session -----------------------------------------------------------

    async def join(self, room: str, *, since: Position | None = None) -> Joined:
        """Join `room` (idempotent), catching up from `since`: see `Hub.join`. Private
        session and user rooms cannot be joined."""
        return await self.hub.join(self, room, since=since)

    async def leave(self, room: str) -> None:
        await self.hub.leave(self, room)

    async def reload_session(self) -> None:
        """Reload the session from the storage.

        Raises:
            LoggedOut, SessionExpired: the session ended (the socket will be closed).
            Unavailable: the storage cannot be reached.
        """
        await self.hub.sessions.reload(self.handle)
        if self.user is not None:
            user = self.handle.session.get("user")
            if user is None or user.get("id") != self.user.get("id"):
                raise LoggedOut()

    async def modify_session(self, fn: Callable[[dict[str, Any]], T]) -> T:
        """Apply `fn` to the stored session as one atomic read-modify-write; returns its result.

        `fn` gets the session data as a dict and changes it in place. Concurrent
        modifications of one session, from sockets and HTTP routes in any process, are
        all kept (protocol.md, "Sessions"). `socket.session` shows the result afterwards.

        Raises:
            SessionReadOnly: cookie storage (a socket cannot set a cookie); nothing changed.
            LoggedOut: the session is gone (the socket will be closed).
            Unavailable: the storage cannot be reached; nothing changed, or (when Redis
                stopped answering in the middle) the outcome is unknown.
            Whatever `fn` raises; nothing changed.
        """
        return await self.hub.sessions.modify_stored(self.handle, fn)

    async def update_session(self, changes: dict[str, Any]) -> None:
        """Apply `changes` to the session and persist them, all or nothing.

        Raises:
            SessionReadOnly: cookie storage (a socket cannot set a cookie); nothing changed.
            Unavailable: the storage cannot be reached; nothing changed.
        """
        await self.hub.sessions.update(self.handle, changes)

    # -- closing ---------------------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with `code`; no further event of this socket is handled.

        Returns at once: the read loop performs the closing handshake, because only the
        task that reads can wait for the client's answering close frame.
        """
        self.close_soon(code, reason)

    def close_soon(self, code: int, reason: str) -> None:
        """The same as `close`, for callers that are not coroutines."""
        if self._closing:
            return
        self._closing = True
        self.close_code = code
        self.close_reason = reason
        self._fail_pending()
        if self._reader is not None:
            self._reader.interrupt()

    def _detach(self) -> None:
        """The read loop has ended (called by the transport); nothing to interrupt any more."""
        self._reader = None

    def _connection_lost(self, code: int | None) -> None:
        """The connection ended with `code` (called by the transport)."""
        if self.close_code is None:
            self.close_code = code
        self._closing = True
        self._fail_pending()

    def _fail_pending(self) -> None:
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(SocketClosed(f"socket {self.id} closed"))
        self._pending.clear()

    def __repr__(self) -> str:
        return f"<Socket {self.id} user={self.user and self.user.get('id')}>"
