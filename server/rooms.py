"""Room membership of this process's sockets: bookkeeping only, no I/O."""

from __future__ import annotations

from typing import Collection, Generic, Hashable, Iterable, Iterator, TypeVar

M = TypeVar("M", bound=Hashable)


class Rooms(Generic[M]):
    """Which members are in which room, both ways, with empty rooms removed."""

    def __init__(self) -> None:
        self._members: dict[str, set[M]] = {}
        # A member's rooms as a tuple: a socket is in a few (its two private ones, mostly),
        # and a tuple of two costs a quarter of a set's memory, for each idle socket.
        self._rooms: dict[M, tuple[str, ...]] = {}

    def add(self, room: str, member: M) -> bool:
        """Put `member` in `room`; False if it was there already."""
        members = self._members.setdefault(room, set())
        if member in members:
            return False
        members.add(member)
        self._rooms[member] = self._rooms.get(member, ()) + (room,)
        return True

    def discard(self, room: str, member: M) -> bool:
        """Take `member` out of `room`; False if it was not there."""
        members = self._members.get(room)
        if members is None or member not in members:
            return False
        members.remove(member)
        if not members:
            del self._members[room]
        rooms = tuple(r for r in self._rooms[member] if r != room)
        if rooms:
            self._rooms[member] = rooms
        else:
            del self._rooms[member]
        return True

    def remove(self, member: M) -> tuple[str, ...]:
        """Take `member` out of every room; returns the rooms it was in."""
        rooms = self._rooms.pop(member, ())
        for room in rooms:
            members = self._members[room]
            members.remove(member)
            if not members:
                del self._members[room]
        return rooms

    def members(self, room: str) -> Iterable[M]:
        return self._members.get(room, ())

    def count(self, room: str) -> int:
        return len(self._members.get(room, ()))

    def sizes(self) -> Iterator[tuple[str, int]]:
        """Every room and its number of members (for metrics)."""
        for room, members in self._members.items():
            yield room, len(members)

    def rooms_of(self, member: M) -> Collection[str]:
        return self._rooms.get(member, ())

    def __contains__(self, room: object) -> bool:
        return room in self._members
