"""The hub: event handlers, middlewares, rooms, and emitting from anywhere.

    hub = Hub(sessions)
    hub.use(reload_session)

    @hub.on("chat")
    async def chat(socket, data):
        await hub.emit("chat", data, room=data["room"])
        return {"ok": True}          # the ack's data

The hub knows nothing of aiohttp's websockets (that is `transport.py`) nor of any app.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from typing import Any, Awaitable, Callable, Iterable

from .backplane import Backplane, Disconnect, Emit, LocalBackplane, Message
from .codes import CloseCode
from .errors import CloseConnection, Forbidden, InvalidData, LimitReached, Unauthorized, Unavailable, UnknownEvent
from .history import Joined, Position
from .metrics import NO_METRICS, Probe
from .presence import Presence, presence_for
from .protocol import EVENT_NAME, Event, encode_event, open_room_event
from .rooms import Rooms
from .sessions import SessionBridge, session_tag
from .sockets import Socket

log = logging.getLogger(__name__)

Handler = Callable[[Socket, Any], Awaitable[Any]]
Next = Callable[[Socket, Event], Awaitable[Any]]
Middleware = Callable[[Socket, Event, Next], Awaitable[Any]]
ConnectMiddleware = Callable[[Socket], Awaitable[None]]
SocketHook = Callable[[Socket], Awaitable[None]]
JoinCheck = Callable[[Socket, str], Awaitable[bool]]
RoomPredicate = Callable[[str], bool]

# Rooms the hub puts every socket in; sockets cannot join or leave them.
PRIVATE_PREFIXES = ("session:", "user:")
# Live events that may wait for one socket while its join reads the room's history: past
# this it is closed as too slow (4408), as when they wait to be sent.
HOLD_LIMIT = 1 << 20


def session_room(session: Any) -> str | None:
    """The private room of one browser session (a hash: it reveals no session identity)."""
    tag = session_tag(session)
    return None if tag is None else f"session:{tag}"


def user_room(user_id: Any) -> str:
    """The private room of every socket of one user."""
    return f"user:{user_id}"


async def require_user(socket: Socket) -> None:
    """Connect middleware: only a logged-in session may connect (else close 4401)."""
    if socket.user is None:
        raise Unauthorized()


async def reload_session(socket: Socket, event: Event, call_next: Next) -> Any:
    """Middleware: reload the session before every handler; close 4001/4002 if it ended."""
    await socket.reload_session()
    return await call_next(socket, event)


class Hub:
    """Routes incoming events to handlers and outgoing emits to sockets."""

    def __init__(
        self,
        sessions: SessionBridge,
        *,
        backplane: Backplane | None = None,
        connect: Iterable[ConnectMiddleware] = (require_user,),
        session_check_interval: float = 15.0,
        max_rooms_per_socket: int = 100,
        presence: RoomPredicate | None = None,
    ) -> None:
        self.sessions = sessions
        self.backplane = backplane or LocalBackplane()
        self.rooms: Rooms[Socket] = Rooms()
        self.sockets: dict[str, Socket] = {}
        self.session_check_interval = session_check_interval
        self.max_rooms_per_socket = max_rooms_per_socket
        self._handlers: dict[str, Handler] = {}
        self._middlewares: list[Middleware] = []
        self._connect = list(connect)
        self._accepted_hooks: list[SocketHook] = []
        self._closed: list[SocketHook] = []
        self._join_checks: list[JoinCheck] = []
        self._chain: Next = self._call_handler
        self._sweeper: asyncio.Task[None] | None = None
        # Sockets joining a room with history: its live events wait while the replay is
        # read and sent, then those the replay had are dropped (room -> socket -> hold).
        self._holds: dict[str, dict[Socket, _Hold]] = {}
        # Presence (who is in a room) is tracked in the rooms `presence(room)` is true of.
        self._tracks_presence = presence
        self._presence: Presence | None = None
        if presence is not None:
            self._presence = presence_for(self.backplane)
            self._handlers["presence"] = self._presence_event
        # What the hub, the transport and sockets count: nothing until metrics are exposed
        # (server/metrics.py, `expose_metrics`).
        self.metrics: Probe = NO_METRICS

    # -- registration ----------------------------------------------------------------

    def on(self, event: str) -> Callable[[Handler], Handler]:
        """Register the handler of `event`; its return value becomes the ack's data."""
        if EVENT_NAME.fullmatch(event) is None:
            raise ValueError(f"event names are 1 to 64 characters of A-Za-z0-9_.:-, not {event!r}")

        def register(handler: Handler) -> Handler:
            self._handlers[event] = handler
            return handler

        return register

    def use(self, middleware: Middleware) -> Middleware:
        """Run `middleware(socket, event, call_next)` around every handler, in `use` order.

        The middleware gets its three arguments by position: name them as you like.
        """
        self._middlewares.append(middleware)
        chain: Next = self._call_handler
        for outer in reversed(self._middlewares):
            chain = functools.partial(_step, outer, chain)
        self._chain = chain
        return middleware

    def on_connect(self, middleware: ConnectMiddleware) -> ConnectMiddleware:
        """Run `middleware(socket)` before a socket is accepted; raise CloseConnection to refuse.

        The hub starts with `require_user` (close 4401 unless logged in); pass
        `connect=()` to the `Hub` to let anonymous sockets in.
        """
        self._connect.append(middleware)
        return middleware

    def on_accepted(self, hook: SocketHook) -> SocketHook:
        """Run `hook(socket)` once a socket is accepted, before its first event is read.

        The socket has had its `connected` frame and is in its private rooms: the hook may
        join rooms and emit. Raising CloseConnection closes the socket with that code; any
        other exception is logged and closes it with 1011.
        """
        self._accepted_hooks.append(hook)
        return hook

    def on_closed(self, hook: SocketHook) -> SocketHook:
        """Run `hook(socket)` after a socket's connection ended, whoever closed it.

        `socket.close_code` says how; `socket.rooms` still lists its rooms (it leaves them
        once the hooks have run). Exceptions are logged.
        """
        self._closed.append(hook)
        return hook

    def authorize_join(self, check: JoinCheck) -> JoinCheck:
        """Ask `await check(socket, room)` before a socket joins a room it is not in.

        False refuses the join with `forbidden`; the check may raise `Forbidden("...")`
        itself to give its own message. Every check must allow it.
        """
        self._join_checks.append(check)
        return check

    # -- the life of a socket (called by the transport) --------------------------------

    async def _admit(self, socket: Socket) -> None:
        """Run the connect middlewares. Raises CloseConnection to refuse the socket."""
        for middleware in self._connect:
            await middleware(socket)

    async def _add(self, socket: Socket) -> None:
        """Register an accepted socket and put it in its private rooms (before its
        `connected` frame: what is emitted to its session or user after it reaches it)."""
        rooms = [room for room in (session_room(socket.session),
                                   None if socket.user is None else user_room(socket.user["id"])) if room]
        for room in rooms:
            # Subscribed first, joined after: nothing reaches the socket before `connected`.
            try:
                await self.backplane.listen(room)
            except Unavailable:
                pass  # Redis is down: nothing crosses processes now, and the link resubscribes
        self.sockets[socket.id] = socket
        for room in rooms:
            self.rooms.add(room, socket)

    async def _accepted(self, socket: Socket) -> None:
        """Run the `on_accepted` hooks (after the socket's `connected` frame)."""
        for hook in self._accepted_hooks:
            try:
                await hook(socket)
            except CloseConnection as exc:
                socket.close_soon(exc.code, exc.reason)
                return
            except Exception:
                log.exception("on_accepted hook %s failed on socket %s", _name(hook), socket.id)
                socket.close_soon(CloseCode.INTERNAL_ERROR, "internal error")
                return

    async def _remove(self, socket: Socket) -> None:
        """Run `on_closed`, then forget the socket and take it out of every room."""
        for hook in self._closed:
            try:
                await hook(socket)
            except Exception:
                log.exception("on_closed hook %s failed on socket %s", _name(hook), socket.id)
        if self.sockets.pop(socket.id, None) is not None:
            self.metrics.closed(socket)  # at the moment it leaves `sockets`: its frames counted once
        for room in self.rooms.remove(socket):
            self._release(room, socket)
            if not self.rooms.count(room):
                self.backplane.unlisten(room)
            if not room.startswith(PRIVATE_PREFIXES):
                self._exited(room, socket)
                await self.backplane.left(room, socket.id)

    async def dispatch(self, socket: Socket, event: Event) -> Any:
        """Run the handler of `event` through the middlewares; returns the ack's data."""
        if event.event not in self._handlers:
            raise UnknownEvent(f"no handler for event {event.event!r}")
        return await self._chain(socket, event)

    async def _call_handler(self, socket: Socket, event: Event) -> Any:
        return await self._handlers[event.event](socket, event.data)

    # -- rooms -----------------------------------------------------------------------

    async def join(self, socket: Socket, room: str, *, since: Position | None = None) -> Joined:
        """Put `socket` in `room` (idempotent); returns the room's position (protocol.md,
        "Recovery").

        When the backplane keeps history, the socket gets the room's events after the
        returned position, none before it. With `since`, the position of the last event
        the client has (from an earlier socket, or before a gap), the events after it are
        sent first, in order, if the history still has them all (`recovered`); a member
        gets them too. No event is sent twice or skipped between those and the live ones.

        Raises:
            InvalidData, Forbidden: not a room a socket may join (a private room, or one an
                `authorize_join` check refused).
            LimitReached: the socket is in `max_rooms_per_socket` rooms already.
            Unavailable: Redis is unreachable (the socket is not in the room).
        """
        _check_room(room)
        rooms = self.rooms.rooms_of(socket)
        member = room in rooms
        if not member:
            if len(rooms) - _private(rooms) >= self.max_rooms_per_socket:
                raise LimitReached(f"a socket may be in at most {self.max_rooms_per_socket} rooms; leave one first")
            for check in self._join_checks:
                if not await check(socket, room):
                    raise Forbidden(f"you may not join {room!r}")
            if socket.closed:
                return Joined()  # closed while a check ran: it would never leave the room
        if not self.backplane.keeps_history:
            if not member:
                await self._join(socket, room)
            return Joined(recovered=None if since is None else False)
        if member and since is None:
            # Racing the live events: some before this position may still be on their way.
            return Joined((await self.backplane.replay(room, None)).position)
        return await self._catch_up(socket, room, since, member)

    async def leave(self, socket: Socket, room: str) -> None:
        _check_room(room)
        self._release(room, socket)
        if self._discard(room, socket):
            self._exited(room, socket)
            await self.backplane.left(room, socket.id)

    async def count(self, room: str) -> int:
        """How many sockets are in `room` (in every process that shares the backplane)."""
        return await self.backplane.count(room)

    async def _join(self, socket: Socket, room: str) -> None:
        if not self.rooms.add(room, socket):
            return
        try:
            # Every join waits until the room's messages reach this process (the first one
            # of a room subscribes; the others may be waiting for that), so nothing emitted
            # after its ack can miss the socket. Private rooms are never counted.
            await self.backplane.listen(room)
            if not room.startswith(PRIVATE_PREFIXES):
                await self.backplane.joined(room, socket.id)
        except Exception:
            self._discard(room, socket)
            raise
        if room in self.rooms.rooms_of(socket):  # not left or closed meanwhile: it will be
            self._entered(room, socket)

    async def _catch_up(self, socket: Socket, room: str, since: Position | None, member: bool) -> Joined:
        holds = self._holds.setdefault(room, {})
        held = holds.get(socket)
        if held is not None and held.position is None:
            raise InvalidData(f"this socket is already joining {room!r}: wait for that join's answer")
        hold = holds[socket] = _Hold()
        try:
            if not member:
                await self._join(socket, room)
            # Read after the room's messages reach this process: whatever Redis gives a
            # later position reaches the hold.
            replay = await self.backplane.replay(room, since)
        except BaseException:
            self._release(room, socket, hold)
            raise
        for frame in replay.frames:
            await socket.send_frame(frame)
        hold.position = position = replay.position
        while hold.frames:
            later, frame = hold.frames.popleft()
            if later.epoch != position.epoch or later.offset > position.offset:
                hold.position = position = later
                await socket.send_frame(frame)
        # The hold stays, dropping what the replay had, until a later event arrives.
        return Joined(position, replay.recovered, len(replay.frames))

    def _release(self, room: str, socket: Socket, hold: _Hold | None = None) -> None:
        holds = self._holds.get(room)
        if holds is None or (hold is not None and holds.get(socket) is not hold):
            return
        holds.pop(socket, None)
        if not holds:
            del self._holds[room]

    def _discard(self, room: str, socket: Socket) -> bool:
        if not self.rooms.discard(room, socket):
            return False
        if not self.rooms.count(room):
            self.backplane.unlisten(room)
        return True

    # -- presence: who is in a room ----------------------------------------------------

    async def presence(self, room: str) -> list[dict[str, Any]]:
        """Every user with a socket in `room`, on every process: `{"id", "name", "sockets"}`
        (protocol.md, "Presence"), sorted by name.

        Raises:
            ValueError: presence is not tracked in `room` (see `Hub(presence=...)`).
            Unavailable: Redis is unreachable.
        """
        if self._presence is None or not self._tracks_room(room):
            raise ValueError(f"presence is not tracked in {room!r}: see Hub(presence=...)")
        return await self._presence.users(room)

    def _tracks_room(self, room: str) -> bool:
        return (self._tracks_presence is not None and not room.startswith(PRIVATE_PREFIXES)
                and self._tracks_presence(room))

    def _entered(self, room: str, socket: Socket) -> None:
        if self._presence is not None and socket.user is not None and self._tracks_room(room):
            self._presence.entered(room, socket.user)

    def _exited(self, room: str, socket: Socket) -> None:
        if self._presence is not None and socket.user is not None:
            self._presence.exited(room, socket.user)  # a room it did not count is ignored

    async def _presence_event(self, socket: Socket, data: Any) -> dict[str, Any]:
        room = data.get("room") if type(data) is dict else None
        if type(room) is not str or not room:
            raise InvalidData('"room" must be a non-empty string')
        if room not in self.rooms.rooms_of(socket):
            raise Forbidden(f"join {room!r} to see who is in it")
        if not self._tracks_room(room):
            raise InvalidData(f"presence is not tracked in {room!r}")
        return {"room": room, "users": await self.presence(room)}

    # -- emitting (from handlers, HTTP routes, anywhere) ---------------------------------

    async def emit(self, event: str, data: Any = None, *, room: str | None = None,
                   skip: Socket | None = None) -> None:
        """Send an event to every socket in `room` (everyone if None), except `skip`.

        When the backplane keeps history, an event to a public room without `skip` is kept
        and carries the room and its position (a skipped socket would see a gap).

        Raises:
            Unavailable: such an event while Redis is unreachable; it was sent to no one.
        """
        if (room is not None and skip is None and self.backplane.keeps_history
                and not room.startswith(PRIVATE_PREFIXES)):
            await self.backplane.publish(Emit(open_room_event(event, data, room), room, keep=True))
            return
        frame = encode_event(event, data)  # once per emit, whatever the number of recipients
        await self.backplane.publish(Emit(frame, room, None if skip is None else skip.id))

    async def disconnect_session(self, session: Any, code: int = CloseCode.LOGGED_OUT,
                                 reason: str | None = None) -> None:
        """Close every socket of a browser session (e.g. from the logout route)."""
        room = session_room(session)
        if room is not None:
            await self.backplane.publish(Disconnect(room, int(code), reason or _reason(code)))

    async def _deliver(self, message: Message) -> None:
        if type(message) is Emit:
            targets = self.sockets.values() if message.room is None else self.rooms.members(message.room)
            skip = message.skip
            frame = message.frame
            holds = None
            if self._holds and message.position is not None and message.room is not None:
                holds = self._holds.get(message.room)
            for socket in list(targets):
                if socket.id != skip:
                    if holds is not None and socket in holds and self._held(holds, socket, message):
                        continue
                    await socket.send_frame(frame)
        elif type(message) is Disconnect:
            for socket in list(self.rooms.members(message.room)):
                socket.close_soon(message.code, message.reason)

    def _held(self, holds: dict[Socket, _Hold], socket: Socket, message: Emit) -> bool:
        """Whether a joining socket's hold takes this event (kept for later, or dropped as
        one the replay had); False once it is past the hold, which is then released."""
        hold = holds[socket]
        assert message.position is not None and message.room is not None
        if hold.position is None:
            hold.frames.append((message.position, message.frame))
            hold.size += len(message.frame)
            if hold.size > HOLD_LIMIT:
                socket.close_soon(CloseCode.TOO_SLOW, "client too slow to read")
            return True
        if message.position.epoch == hold.position.epoch and message.position.offset <= hold.position.offset:
            return True
        self._release(message.room, socket, hold)
        return False

    # -- running ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivering emits and checking sessions (at application start-up)."""
        await self.sessions.start()
        await self.backplane.start(self._deliver, self.rooms)
        if self._presence is not None:
            await self._presence.start()
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down") -> None:
        """Close every socket with `code` (1001 by default) and stop background work."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for socket in list(self.sockets.values()):
            socket.close_soon(code, reason)
        if self._presence is not None:
            await self._presence.stop()  # before the backplane: it tells the others who left
        await self.backplane.stop()

    async def _sweep(self) -> None:
        # Closes idle sockets whose session ended: a busy one learns it from reload_session.
        while True:
            await asyncio.sleep(self.session_check_interval)
            try:
                sockets = {id(s.handle): s for s in self.sockets.values() if not s.closed}
                for handle, ended in await self.sessions.check(s.handle for s in sockets.values()):
                    sockets[id(handle)].close_soon(ended.code, ended.reason)
            except Exception:
                log.exception("session check failed; retrying in %s s", self.session_check_interval)


class _Hold:
    """The live events of a socket's room while it joins; `position` is set once the
    replay is sent: the last one the socket has."""

    __slots__ = ("frames", "position", "size")

    def __init__(self) -> None:
        self.frames: deque[tuple[Position, bytes]] = deque()
        self.position: Position | None = None
        self.size = 0  # bytes in `frames`


def _step(middleware: Middleware, call_next: Next, socket: Socket, event: Event) -> Awaitable[Any]:
    # Not a coroutine: the middleware's own is the only frame a step adds.
    return middleware(socket, event, call_next)


def _name(hook: Any) -> str:
    return getattr(hook, "__qualname__", repr(hook))


def _private(rooms: Iterable[str]) -> int:
    return sum(1 for room in rooms if room.startswith(PRIVATE_PREFIXES))


def _check_room(room: Any) -> None:
    if type(room) is not str or not room:
        raise InvalidData("a room name must be a non-empty string")
    if room.startswith(PRIVATE_PREFIXES):
        raise Forbidden("private session and user rooms cannot be joined or left")


def _reason(code: int) -> str:
    for cls in CloseConnection.__subclasses__():
        if cls.code == code:
            return cls.reason
    return "closed"
