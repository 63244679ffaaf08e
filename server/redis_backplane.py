"""A backplane through Redis pub/sub, for several server processes sharing one Redis.

Every emit and disconnect is delivered to this process's sockets at once and published
for the other processes, which skip their own messages (each carries its instance id), so
every target socket gets it exactly once. A message travels on its room's own channel
(`<prefix>r:<room>`; emits to everyone on `<prefix>all`), and a process subscribes to the
channel of a room only while it has sockets in it (the session and user rooms included):
a process receives what it delivers, not the whole deployment's traffic. A join returns
once the room's subscription is in place, so nothing emitted after its ack is missed. A
room's channel stays subscribed for `linger` seconds after its last local socket left:
the tab that reloads rejoins it at no cost. Publishes and the subscription share the
process's `RedisLink`: a publish waits in its pipeline whatever the load, and is lost only
when Redis is unreachable (the message then reaches this process's sockets only; counted
in `local_only` and logged, at most every 10 s). Messages from one process arrive in the
order it published them.

An event kept in a room's history (`Emit.keep`) takes another path: one Redis script gives
it its position, keeps it and publishes it (redis_history.py), and every process delivers
it from the subscription, this one included, so a room's events reach every socket in the
order of their offsets. While Redis is unreachable it fails with `Unavailable` and reaches
no one: a part of the room getting an event without a position would be a gap no client
can see.

Room sizes live in one Redis hash per room, `instance -> sockets of that instance`, next
to a key per live instance that expires unless renewed. A crashed instance's members stop
counting when its key expires (`ttl` seconds at most) and are deleted by the next count.
Each change of a size writes the size this process holds now, over the one link, so the
writes reach Redis in the order they were made and the last one is right. An instance
that finds its own key gone (an outage longer than `ttl`, a Redis restart), or whose
writes failed, writes its sizes again; its own size is always counted from memory.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from typing import Callable

import orjson

from .backplane import Backplane, Deliver, Disconnect, Emit, LocalRooms, Message
from .errors import Unavailable
from .history import HistorySettings, Position, Replay
from .redis_history import RedisHistory
from .redis_link import RedisLink, RedisUnavailable
from .resp import ReplyError

log = logging.getLogger(__name__)


class RedisBackplane(Backplane):
    def __init__(self, link: RedisLink, *, prefix: str = "ws:", ttl: float = 10.0, linger: float = 10.0,
                 history: HistorySettings = HistorySettings()) -> None:
        self.link = link
        self._history = RedisHistory(link, prefix, history) if history.enabled else None
        self.prefix = prefix
        self.instance = secrets.token_hex(8)
        self.ttl = ttl
        self.linger = linger
        self.local_only = 0  # messages that could not be published (Redis unreachable)
        self.errors: Counter[str] = Counter()
        self._channel = prefix + "all"
        self._room_prefix = prefix + "r:"
        self._subscribed: set[str] = set()  # rooms whose channel Redis has confirmed
        self._subscribing: dict[str, asyncio.Task[None]] = {}
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._rooms_key = prefix + "room:"
        self._instance_prefix = prefix + "instance:"
        self._instance_key = self._instance_prefix + self.instance
        self._deliver: Deliver | None = None
        self._rooms: LocalRooms | None = None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._unsynced: set[str] = set()  # rooms whose size Redis may not have
        self._counted: set[str] = set()  # rooms this instance has members of, in Redis
        self._tasks: list[asyncio.Task[None]] = []
        self._logged_at = 0.0
        self._unlogged = 0
        # Called when this instance's key was found gone (an outage longer than `ttl`, a
        # Redis restart): what it wrote may have been dropped by the others, or lost.
        self.on_lost: list[Callable[[], None]] = []

    @property
    def connected(self) -> asyncio.Event:
        """Set while messages reach the other processes (the link is up and subscribed)."""
        return self.link.up

    @property
    def healthy(self) -> bool:
        return self.link.up.is_set()

    async def start(self, deliver: Deliver, rooms: LocalRooms) -> None:
        self._deliver, self._rooms = deliver, rooms
        self.link.on_up.append(self._reconnected)
        self._tasks = [asyncio.create_task(self._pass_on(deliver)), asyncio.create_task(self._beat())]
        try:
            await self.link.subscribe(self._channel, self._received)
        except RedisUnavailable:
            pass  # subscribed when the link connects

    async def stop(self) -> None:
        for timer in self._lingering.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.link.call("DEL", self._instance_key)
        except (RedisUnavailable, ReplyError):
            pass  # the key expires by itself

    async def publish(self, message: Message) -> None:
        assert self._deliver is not None, "the backplane is not started"
        channel = self._channel if message.room is None else self._room_prefix + message.room
        self.published += 1
        if type(message) is Emit and message.keep:
            await self._keep(message, channel)
            return
        await self._deliver(message)
        try:
            await self.link.call("PUBLISH", channel, _encode(self.instance, message))
        except (RedisUnavailable, ReplyError) as exc:
            self._lost(message, exc)

    async def _keep(self, message: Emit, channel: str) -> None:
        # Reaches this process's sockets too through the subscription, after Redis gave it
        # its position: every process delivers a room's events in the order of their offsets.
        # Redis writes the script's PUBLISH to our connection before the script's reply, so
        # the delivery task is woken before this coroutine: the sender's own socket still
        # gets the event before its ack.
        assert self._history is not None and message.room is not None, "keep needs history and a room"
        header = orjson.dumps([self.instance, "kept", message.room, message.skip])
        try:
            await self._history.append(message.room, channel, header, message.frame)
        except (RedisUnavailable, ReplyError):
            self.errors["publish"] += 1
            # Sent nowhere rather than to some: a room event without a position would be a
            # gap that no client can see.
            raise Unavailable("room events cannot be sent while Redis is unreachable") from None

    @property
    def keeps_history(self) -> bool:
        return self._history is not None

    async def replay(self, room: str, since: Position | None) -> Replay:
        if self._history is None:
            return await super().replay(room, since)
        try:
            return await self._history.replay(room, since)
        except (RedisUnavailable, ReplyError):
            self.errors["replay"] += 1
            raise Unavailable("room history is unavailable while Redis is unreachable") from None
    def instance_key(self, instance: str) -> str:
        """The key that exists while `instance` is alive (it expires `ttl` after a crash)."""
        return self._instance_prefix + instance

    @property
    def subscribed(self) -> frozenset[str]:
        """The rooms whose messages reach this process now."""
        return frozenset(self._subscribed)

    async def listen(self, room: str) -> None:
        timer = self._lingering.pop(room, None)
        if timer is not None:
            timer.cancel()
        if room in self._subscribed:
            return
        task = self._subscribing.get(room)
        if task is None:
            task = self._subscribing[room] = asyncio.create_task(self._subscribe(room))
        try:
            await asyncio.shield(task)  # another join may be waiting for the same subscription
        except RedisUnavailable:
            self.errors["subscribe"] += 1
            raise Unavailable("rooms are unavailable while Redis is unreachable") from None

    def unlisten(self, room: str) -> None:
        if room not in self._lingering:
            self._lingering[room] = asyncio.get_running_loop().call_later(self.linger, self._drop, room)

    async def _subscribe(self, room: str) -> None:
        try:
            await self.link.subscribe(self._room_prefix + room, self._received)
            self._subscribed.add(room)
        finally:
            del self._subscribing[room]

    def _drop(self, room: str) -> None:
        self._lingering.pop(room, None)
        assert self._rooms is not None
        if self._rooms.count(room) or room in self._subscribing:
            return  # joined again meanwhile
        self._subscribed.discard(room)
        self.link.unsubscribe(self._room_prefix + room)

    async def joined(self, room: str, socket_id: str) -> None:
        await self._sync(room)

    async def left(self, room: str, socket_id: str) -> None:
        try:
            await self._sync(room)
        except Unavailable:
            pass  # a leave never fails: the size is written again once Redis is back

    async def count(self, room: str) -> int:
        assert self._rooms is not None
        key = self._rooms_key + room
        try:
            sizes: dict[bytes, bytes] = await self.link.call("HGETALL", key)
            me = self.instance.encode()
            others = [i for i in sizes if i != me]
            prefix = self._instance_prefix.encode()
            alive = await self.link.call("MGET", *[prefix + i for i in others]) if others else []
        except (RedisUnavailable, ReplyError):
            self.errors["count"] += 1
            raise Unavailable("room sizes are unavailable while Redis is unreachable") from None
        dead = [i for i, a in zip(others, alive) if a is None]
        if dead:
            try:
                await self.link.call("HDEL", key, *dead)
            except (RedisUnavailable, ReplyError):
                pass
        return sum(int(sizes[i]) for i, a in zip(others, alive) if a is not None) + self._rooms.count(room)

    async def _sync(self, room: str) -> None:
        """Write this instance's size of `room` to Redis."""
        assert self._rooms is not None
        size = self._rooms.count(room)
        key = self._rooms_key + room
        try:
            if size:
                self._counted.add(room)
                await self.link.call("HSET", key, self.instance, size)
            else:
                self._counted.discard(room)
                await self.link.call("HDEL", key, self.instance)
        except (RedisUnavailable, ReplyError):
            self.errors["room_size"] += 1
            self._unsynced.add(room)
            raise Unavailable("rooms are unavailable while Redis is unreachable") from None
        self._unsynced.discard(room)

    def _lost(self, message: Message, exc: Exception) -> None:
        self.local_only += 1
        self.errors["publish"] += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= 10:
            log.warning("Redis unreachable (%s): %d message(s) reached this process's sockets only",
                        exc, self._unlogged)
            self._logged_at, self._unlogged = now, 0

    # -- background work --------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        try:
            origin, message = _decode(data)
        except Exception:
            log.exception("unreadable message on the backplane, dropped")
            return
        if origin != self.instance:
            self.received += 1
        if origin != self.instance or (type(message) is Emit and message.keep):  # kept: not delivered at publish
            self._inbox.put_nowait(message)

    async def _pass_on(self, deliver: Deliver) -> None:
        # One task delivers what other processes published, in the order it arrived.
        while True:
            message = await self._inbox.get()
            try:
                await deliver(message)
            except Exception:
                log.exception("delivering a message from another process failed")

    def _reconnected(self) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(self._renew()))  # now, not at the next beat

    async def _beat(self) -> None:
        while True:
            await self._renew()
            await asyncio.sleep(self.ttl / 3)

    async def _renew(self) -> None:
        """Renew this instance's key; write the sizes Redis missed or lost."""
        try:
            was = await self.link.call("SET", self._instance_key, 1, "PX", int(self.ttl * 1000), "GET")
            if was is None:  # expired or lost: other instances have dropped our sizes
                self._unsynced.update(self._counted)
                for lost in self.on_lost:
                    try:
                        lost()
                    except Exception:
                        log.exception("an on_lost callback failed")
            for room in list(self._unsynced):
                await self._sync(room)
        except (RedisUnavailable, ReplyError, Unavailable):
            pass


def _encode(instance: str, message: Message) -> bytes:
    # A JSON header line, then the frame as it goes to sockets (orjson never writes a raw
    # newline, so the first one ends the header).
    if type(message) is Emit:
        return orjson.dumps([instance, "emit", message.room, message.skip]) + b"\n" + message.frame
    assert type(message) is Disconnect
    return orjson.dumps([instance, "disconnect", message.room, message.code, message.reason])


def _decode(raw: bytes) -> tuple[str, Message]:
    header, _, frame = raw.partition(b"\n")
    fields = orjson.loads(header)
    if fields[1] == "emit":
        return fields[0], Emit(frame, fields[2], fields[3])
    if fields[1] == "kept":  # the history script added a line: "<offset> <epoch>"
        line, _, frame = frame.partition(b"\n")
        offset, epoch = line.split(b" ")
        return fields[0], Emit(frame, fields[2], fields[3], True, Position(epoch.decode(), int(offset)))
    return fields[0], Disconnect(fields[2], fields[3], fields[4])
