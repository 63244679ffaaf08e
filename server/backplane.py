"""How the hub's messages reach sockets: one interface, one implementation per reach.

The hub publishes every emit and disconnect through a `Backplane` and gets them back
through the `deliver` callback it registered, including its own messages. `LocalBackplane`
does that in-process; a pub/sub implementation can carry the same messages between
processes without the hub changing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import MappingProxyType
from typing import Awaitable, Callable, Mapping, Protocol, Union

from .history import HistorySettings, MemoryHistory, Position, Replay


@dataclass(frozen=True, slots=True)
class Emit:
    """Send `frame` (already serialized) to the sockets of `room` (all if None) but `skip`.

    With `keep`, the event goes into the room's history: `frame` is then published open
    (`open_room_event`), and the backplane delivers it completed with its `position`.
    """

    frame: bytes
    room: str | None = None
    skip: str | None = None
    keep: bool = False
    position: Position | None = None


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close every socket of `room` with `code`."""

    room: str
    code: int
    reason: str


Message = Union[Emit, Disconnect]
Deliver = Callable[[Message], Awaitable[None]]


class LocalRooms(Protocol):
    """What a backplane reads of this process's rooms (the hub's `Rooms`): their sizes."""

    def count(self, room: str) -> int: ...


class Backplane(ABC):
    """Carries messages to every hub that shares it, and counts room members across them."""

    # Read by the metrics (server/metrics.py); the implementations count them.
    published: int = 0  # messages published
    received: int = 0  # messages received from other processes
    errors: Mapping[str, int] = MappingProxyType({})  # operations that failed, by operation

    @abstractmethod
    async def start(self, deliver: Deliver, rooms: LocalRooms) -> None:
        """Begin delivering published messages to `deliver`; `rooms` is this process's."""

    @abstractmethod
    async def publish(self, message: Message) -> None:
        """Deliver `message` to every hub, this one included."""

    async def listen(self, room: str) -> None:
        """Make sure this process gets the messages of `room` from now on (a socket of it
        entered the room); returns once it does."""

    def unlisten(self, room: str) -> None:
        """This process has no socket in `room` any more: its messages may stop coming."""

    @abstractmethod
    async def joined(self, room: str, socket_id: str) -> None:
        """Record that a socket of this process joined `room`."""

    @abstractmethod
    async def left(self, room: str, socket_id: str) -> None:
        """Record that a socket of this process left `room` (or closed)."""

    @abstractmethod
    async def count(self, room: str) -> int:
        """How many sockets are in `room`, in every process."""

    @property
    def keeps_history(self) -> bool:
        """Whether room events can be kept (`Emit.keep`) and replayed (history.py)."""
        return False

    async def replay(self, room: str, since: Position | None) -> Replay:
        """The position of `room` now and, after `since`, the events it kept.

        A message of `room` delivered after this returns has a later position than the one
        returned, unless it was already on its way to this process: the hub drops those.
        """
        raise NotImplementedError("this backplane keeps no history")

    async def stop(self) -> None:
        """Stop delivering and release resources."""

    @property
    def healthy(self) -> bool:
        """Whether messages reach every hub now."""
        return True


class LocalBackplane(Backplane):
    """Everything in this process: a publish is a direct call, a count is a set's size."""

    def __init__(self, *, history: HistorySettings = HistorySettings()) -> None:
        self._deliver: Deliver | None = None
        self._rooms: LocalRooms | None = None
        self._history = MemoryHistory(history) if history.enabled else None

    async def start(self, deliver: Deliver, rooms: LocalRooms) -> None:
        self._deliver = deliver
        self._rooms = rooms

    async def publish(self, message: Message) -> None:
        if self._deliver is None:
            raise RuntimeError("the backplane is not started: call `await hub.start()` first")
        self.published += 1
        if type(message) is Emit and message.keep:
            assert self._history is not None and message.room is not None, "keep needs history and a room"
            position, frame = self._history.append(message.room, message.frame)
            message = Emit(frame, message.room, message.skip, True, position)
        await self._deliver(message)

    @property
    def keeps_history(self) -> bool:
        return self._history is not None

    async def replay(self, room: str, since: Position | None) -> Replay:
        if self._history is None:
            return await super().replay(room, since)
        return self._history.replay(room, since)

    async def joined(self, room: str, socket_id: str) -> None:
        pass

    async def left(self, room: str, socket_id: str) -> None:
        pass

    async def count(self, room: str) -> int:
        assert self._rooms is not None
        return self._rooms.count(room)
