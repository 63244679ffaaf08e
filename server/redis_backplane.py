"""A backplane through Redis pub/sub, for several server processes sharing one Redis.

Every emit and disconnect is delivered to this process's sockets at once and published
for the other processes, which skip their own messages (each carries its instance id), so
every target socket gets it exactly once. Delivery across processes is at most once: what
is published while Redis is unreachable, or while a subscriber is reconnecting, is lost.

Room sizes live in one Redis hash per room, `instance -> sockets of that instance`, next
to a key per live instance that expires unless renewed. A crashed instance's members stop
counting when its key expires (`ttl` seconds at most) and are deleted by the next count.
An instance that finds its own key gone (an outage longer than `ttl`, a Redis restart)
writes all its sizes again; its own size is always counted from memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .backplane import Backplane, Deliver, Disconnect, Emit, Message
from .errors import Unavailable
from .rooms import Rooms

log = logging.getLogger(__name__)


class RedisBackplane(Backplane):
    def __init__(self, redis: Redis, *, prefix: str = "ws:", ttl: float = 10.0) -> None:
        self.redis = redis
        self.instance = secrets.token_hex(8)
        self.ttl = ttl
        self._channel = prefix + "bus"
        self._rooms_key = prefix + "room:"
        self._instance_key = prefix + "instance:"
        self._deliver: Deliver | None = None
        self._rooms: Rooms | None = None
        self._unsynced: set[str] = set()  # rooms whose size Redis missed during an outage
        self._counted: set[str] = set()  # rooms this instance has members of, in Redis
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.connected = asyncio.Event()  # set while the subscription is live

    async def start(self, deliver: Deliver, rooms: Rooms) -> None:
        self._deliver, self._rooms = deliver, rooms
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._beat())]

    async def stop(self) -> None:
        # redis-py may swallow a cancellation that lands inside a command, so the loops
        # also watch `_stopping`.
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=5)
        try:
            await self.redis.delete(self._instance_key + self.instance)
        except RedisError:
            pass  # the key expires by itself

    @property
    def healthy(self) -> bool:
        return self.connected.is_set()

    async def publish(self, message: Message) -> None:
        assert self._deliver is not None, "the backplane is not started"
        await self._deliver(message)
        try:
            await self.redis.publish(self._channel, _encode(self.instance, message))
        except RedisError:
            log.warning("Redis unreachable: a %s reached this process's sockets only", type(message).__name__)

    async def joined(self, room: str, socket_id: str) -> None:
        await self._sync(room)

    async def left(self, room: str, socket_id: str) -> None:
        try:
            await self._sync(room)
        except Unavailable:
            pass  # a leave never fails: the size is written again once Redis is back

    async def count(self, room: str) -> int:
        try:
            sizes = await self.redis.hgetall(self._rooms_key + room)
            instances = list(sizes)
            alive = await self.redis.mget([self._instance_key + i.decode() for i in instances]) if sizes else []
        except RedisError:
            raise Unavailable("room sizes are unavailable while Redis is unreachable") from None
        me = self.instance.encode()
        dead = [i for i, a in zip(instances, alive) if a is None and i != me]
        if dead:
            try:
                await self.redis.hdel(self._rooms_key + room, *dead)
            except RedisError:
                pass
        others = sum(int(sizes[i]) for i, a in zip(instances, alive) if a is not None and i != me)
        return others + self._rooms.count(room)  # type: ignore[union-attr]

    async def _sync(self, room: str) -> None:
        """Write this instance's size of `room` to Redis."""
        assert self._rooms is not None
        size = self._rooms.count(room)
        key = self._rooms_key + room
        try:
            if size:
                await self.redis.hset(key, self.instance, size)
            else:
                await self.redis.hdel(key, self.instance)
        except RedisError:
            self._unsynced.add(room)
            raise Unavailable("rooms are unavailable while Redis is unreachable") from None
        self._unsynced.discard(room)
        if size:
            self._counted.add(room)
        else:
            self._counted.discard(room)

    async def _beat(self) -> None:
        while not self._stopping.is_set():
            await self._renew()
            await self._pause(self.ttl / 3)

    async def _renew(self) -> None:
        """Renew this instance's key; write the sizes Redis missed or lost."""
        assert self._rooms is not None
        try:
            was = await self.redis.set(self._instance_key + self.instance, 1, px=int(self.ttl * 1000), get=True)
            if was is None:  # expired or lost: other instances have dropped our sizes
                self._unsynced.update(self._counted)
            for room in list(self._unsynced):
                await self._sync(room)
        except (RedisError, Unavailable):
            pass

    async def _listen(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                if delay > 0.1:
                    log.info("Redis backplane reconnected")
                    await self._renew()  # now, not at the next beat
                delay = 0.1
                self.connected.set()
                async for item in pubsub.listen():
                    origin, message = _decode(item["data"])
                    if origin != self.instance:
                        await self._deliver(message)  # type: ignore[misc]
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("Redis backplane lost (%s); reconnecting", exc)
                self.connected.clear()
            except Exception:
                log.exception("bad message on the backplane; resubscribing")
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            await self._pause(delay)
            delay = min(delay * 2, 5.0)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass


def _encode(instance: str, message: Message) -> str:
    if type(message) is Emit:
        return json.dumps({"from": instance, "emit": message.frame.decode(), "room": message.room, "skip": message.skip})
    assert type(message) is Disconnect
    return json.dumps({"from": instance, "disconnect": message.room, "code": message.code, "reason": message.reason})


def _decode(raw: bytes) -> tuple[str, Message]:
    data = json.loads(raw)
    if "emit" in data:
        return data["from"], Emit(data["emit"].encode(), data["room"], data["skip"])
    return data["from"], Disconnect(data["disconnect"], data["code"], data["reason"])
