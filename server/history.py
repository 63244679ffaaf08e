"""Room history: the position of every room event, and what a socket that dropped off missed.

Every event emitted to a public room gets a position: the room's `epoch` and an `offset`
that counts the room's events, one by one, within the epoch. The epoch is a string that
changes whenever the history is lost (a Redis restart without persistence, a room silent
for `META_TTL`), so a client holding an older one knows at once. The last `size` events of
a room are kept, each for at most `ttl` seconds: a socket that rejoins with the position it
had gets the events after it, or learns that they are not all there any more
(`recovered` false: it must refetch what it shows).

`MemoryHistory` keeps rooms in this process (one process: cookie storage); the Redis
backplane keeps them in Redis (`redis_history.py`), so a socket may come back on another
process.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import InvalidData
from .protocol import close_room_event

# How long a room's position outlives its last event or join: long enough that a quiet room
# keeps its epoch (its members' next event is no false alarm), short enough that rooms used
# once are forgotten.
META_TTL = 86400.0


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """How much of each room's history is kept: `size` events, each for `ttl` seconds."""

    size: int = 100
    ttl: float = 300.0

    @property
    def enabled(self) -> bool:
        """Zero in either turns history, and so positions and recovery, off."""
        return self.size > 0 and self.ttl > 0


class Position(NamedTuple):
    """Where a room's event stream stands: the last offset of an epoch (0: no event yet)."""

    epoch: str
    offset: int


@dataclass(slots=True)
class Replay:
    """A room's position now and, for a socket that gave one, the events it missed."""

    position: Position
    frames: list[bytes] = field(default_factory=list)  # offsets since.offset + 1 ... position.offset
    recovered: bool | None = None  # None: no position was given


@dataclass(slots=True)
class Joined:
    """What `hub.join` did: the position the socket's stream starts after, and the replay.

    `position` is None when the hub keeps no history (then there are no offsets);
    `recovered` is None when the join gave no `since`. `replayed` counts the events sent
    to catch up, before the join's ack.
    """

    position: Position | None = None
    recovered: bool | None = None
    replayed: int = 0

    def ack(self) -> dict[str, Any]:
        """The fields a `join` ack carries (protocol.md, "Recovery")."""
        fields: dict[str, Any] = {}
        if self.position is not None:
            fields["epoch"], fields["offset"] = self.position
        if self.recovered is not None:
            fields["recovered"] = self.recovered
        return fields


def parse_since(value: Any) -> Position | None:
    """A `since` from the wire, `{"epoch": str, "offset": int}`, or None when absent.

    Raises:
        InvalidData: present but not that shape.
    """
    if value is None:
        return None
    if type(value) is dict:
        epoch, offset = value.get("epoch"), value.get("offset")
        if type(epoch) is str and 0 < len(epoch) <= 64 and type(offset) is int and 0 <= offset < 2**53:
            return Position(epoch, offset)
    raise InvalidData('"since" must be {"epoch": <string>, "offset": <integer of 0 or more>}')


@dataclass(slots=True)
class _Room:
    epoch: str
    offset: int
    events: deque[tuple[int, float, bytes]]  # (offset, time kept, frame), oldest first
    used: float


class MemoryHistory:
    """The history of this process's rooms."""

    def __init__(self, settings: HistorySettings) -> None:
        self.settings = settings
        self._rooms: dict[str, _Room] = {}
        self._swept = time.monotonic()

    def append(self, room: str, head: bytes) -> tuple[Position, bytes]:
        """Give the next position of `room` to an event (`open_room_event`'s frame); returns
        the position and the complete frame."""
        now = time.monotonic()
        state = self._room(room, now)
        state.offset += 1
        frame = close_room_event(head, state.offset, state.epoch)
        state.events.append((state.offset, now, frame))
        return Position(state.epoch, state.offset), frame

    def replay(self, room: str, since: Position | None) -> Replay:
        """The position of `room` now, and the events after `since` when all are kept."""
        now = time.monotonic()
        state = self._room(room, now)
        position = Position(state.epoch, state.offset)
        if since is None:
            return Replay(position)
        if since.epoch != state.epoch or since.offset > state.offset:
            return Replay(position, recovered=False)
        wanted = state.offset - since.offset
        kept = [frame for offset, at, frame in state.events
                if offset > since.offset and at >= now - self.settings.ttl]
        if len(kept) != wanted:
            return Replay(position, recovered=False)  # trimmed or expired: not all there
        return Replay(position, kept, recovered=True)

    def _room(self, room: str, now: float) -> _Room:
        if now - self._swept > 60:
            self._sweep(now)
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room(secrets.token_hex(8), 0, deque(maxlen=self.settings.size), now)
        state.used = now
        return state

    def _sweep(self, now: float) -> None:
        # Memory is bounded by the rooms used lately, not by every room ever used.
        self._swept = now
        for name, state in list(self._rooms.items()):
            while state.events and state.events[0][1] < now - self.settings.ttl:
                state.events.popleft()
            if state.used < now - META_TTL:
                del self._rooms[name]
