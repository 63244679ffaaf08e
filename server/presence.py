"""Who is in a room: users (not sockets), live, across processes, with no ghosts.

The hub tells a `Presence` every time a logged-in socket enters or leaves a room whose
presence it tracks (`Hub(presence=...)`). Each process keeps its own share, `room -> user
-> sockets of this process`, in memory, and writes what changed at most once per
`window` (0.1 s), for every room at once: a user's first socket entering a room, or last
one leaving it, makes a transition, and the transitions of one window go to the room's
members as ONE `presence` frame, `{"room", "joined": [...], "left": [...]}` (protocol.md,
"Presence"). A user who comes and goes within a window makes none; 1,000 sockets joining
in the same moment make a few frames, not 1,000.

The frames are published straight to the backplane as `Emit(frame, room)`, not through
`hub.emit`: they are state, not history, and a client that missed some asks for the list
(`presence` event, `hub.presence(room)`) rather than for them.

`LocalPresence` is one process (cookie sessions): its share is the whole truth.
`RedisPresence` keeps each room in a Redis hash that the processes update with Lua
scripts, so that "first socket of the user, on any process" and "last one" are decided
atomically, once, by Redis:

    <prefix>presence:<room>           hash  s|<instance>|<user> -> sockets of that instance
                                            t|<user>            -> sockets on all instances
                                            n|<user>            -> the user's name (JSON)
    <prefix>presence-rooms:<instance> set   the rooms where <instance> has users
    <prefix>presence-instances        set   the instances that have written any

A process that dies leaves its share behind until its instance key (the backplane's,
`<prefix>instance:<id>`, renewed every ttl/3) expires; the answers to `presence` leave
out the shares of instances whose key is gone at once, and every live process looks for
such instances every ttl/10 and sweeps them with one script, which removes the dead
instance from the set first, so that exactly one sweeper reports its users as `left`.
After an outage (every key may have expired in it) a process sweeps only once the others
had the time to reconnect and renew theirs: a live one is not reported gone.
A process that finds its own key gone (an outage longer than the ttl, a Redis restart, a
loop that stalled) may have been swept: it writes its whole share again, and its users
are `joined` again. Writes that failed (Redis unreachable) are made again once it is back,
with this process's counts as they are then, so what Redis holds converges to the truth.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from abc import ABC, abstractmethod
from typing import Any, Awaitable, Callable, Iterable

import orjson

from .backplane import Backplane, Emit, Message
from .errors import Unavailable
from .protocol import encode_event
from .redis_backplane import RedisBackplane
from .redis_link import RECONNECT_GAP, RedisUnavailable
from .resp import ReplyError

log = logging.getLogger(__name__)

# Seconds over which a room's changes are gathered into one frame: a join is seen by the
# others this much later at most, and a burst costs one frame per member per window.
WINDOW = 0.1

Publish = Callable[[Message], Awaitable[None]]
User = dict[str, Any]  # {"id", "name"}, as in `socket.user`
Diff = tuple[list[User], list[User]]  # joined, left


class _Member:
    """One user in one room, as this process has them."""

    __slots__ = ("id", "name", "sockets")

    def __init__(self, id: Any, name: Any) -> None:
        self.id = id
        self.name = name
        self.sockets = 0

    def public(self) -> User:
        return {"id": self.id, "name": self.name}


def _key(user_id: Any) -> str:
    # The user's id as JSON: 1 and "1" stay two users, and any id fits in a hash field.
    return orjson.dumps(user_id).decode()


class Presence(ABC):
    """This process's share of every tracked room, and the frames its changes make."""

    def __init__(self, publish: Publish, *, window: float = WINDOW) -> None:
        self.window = window
        self.frames = 0  # presence frames published by this process (for the curious, and tests)
        self._publish = publish
        self._shares: dict[str, dict[str, _Member]] = {}  # room -> user key -> member
        # What changed since the last write: room -> user key -> member (0 sockets: gone).
        self._dirty: dict[str, dict[str, _Member]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._stopped = False

    # -- what the hub tells --------------------------------------------------------------

    def entered(self, room: str, user: User) -> None:
        """A socket of `user` entered `room`."""
        if self._stopped:
            return
        key = _key(user["id"])
        share = self._shares.setdefault(room, {})
        member = share.get(key)
        if member is None:
            member = share[key] = _Member(user["id"], user.get("name"))
        member.sockets += 1
        self._changed(room, key, member)

    def exited(self, room: str, user: User) -> None:
        """A socket of `user` left `room` (or closed); ignored if it was not counted."""
        if self._stopped:
            return
        share = self._shares.get(room)
        key = _key(user["id"])
        member = None if share is None else share.get(key)
        if share is None or member is None:
            return
        member.sockets -= 1
        if not member.sockets:
            del share[key]
            if not share:
                del self._shares[room]
        self._changed(room, key, member)

    @abstractmethod
    async def users(self, room: str) -> list[dict[str, Any]]:
        """Every user with a socket in `room`, on every process: `{"id", "name", "sockets"}`.

        Raises:
            Unavailable: Redis is unreachable.
        """

    async def start(self) -> None:
        """Begin background work (at application start-up)."""

    async def stop(self) -> None:
        """Stop writing; what this process's sockets leave from now on is not reported."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- writing changes, one window at a time --------------------------------------------

    def _changed(self, room: str, key: str, member: _Member) -> None:
        self._dirty.setdefault(room, {})[key] = member
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is None and self._flushing is None and not self._stopped:
            self._timer = asyncio.get_running_loop().call_later(self.window, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        batch, self._dirty = self._dirty, {}
        failed = False
        try:
            rooms = list(batch)
            diffs = await asyncio.gather(*(self._write(room, batch[room]) for room in rooms),
                                         return_exceptions=True)
            announcements = []
            for room, diff in zip(rooms, diffs):
                if isinstance(diff, BaseException):
                    if not isinstance(diff, Unavailable):
                        log.error("writing the presence of room %r failed", room, exc_info=diff)
                    failed = True
                    # Written again later, with the counts of that time (the newest wins).
                    again = self._dirty.setdefault(room, {})
                    for key, member in batch[room].items():
                        again.setdefault(key, member)
                else:
                    announcements.append(self._announce(room, *diff))
            await asyncio.gather(*announcements)  # the publishes share one pipeline
        finally:
            self._flushing = None
        if not failed:
            self._schedule_if_dirty()

    def _schedule_if_dirty(self) -> None:
        if self._dirty:
            self._schedule()

    async def _announce(self, room: str, joined: list[User], left: list[User]) -> None:
        if not joined and not left:
            return
        self.frames += 1
        frame = encode_event("presence", {"room": room, "joined": joined, "left": left})
        try:
            await self._publish(Emit(frame, room))
        except Exception:
            log.exception("publishing the presence of room %r failed", room)

    @abstractmethod
    async def _write(self, room: str, members: dict[str, _Member]) -> Diff:
        """Record the members' counts (sockets of this process now); returns who joined
        and who left the room in total. Raises Unavailable when it could not."""


class LocalPresence(Presence):
    """One process: its share is every socket there is."""

    def __init__(self, publish: Publish, *, window: float = WINDOW) -> None:
        super().__init__(publish, window=window)
        self._announced: dict[str, set[str]] = {}  # room -> the users its members were told of

    async def users(self, room: str) -> list[dict[str, Any]]:
        return _sorted({"id": m.id, "name": m.name, "sockets": m.sockets}
                       for m in self._shares.get(room, {}).values())

    async def _write(self, room: str, members: dict[str, _Member]) -> Diff:
        announced = self._announced.setdefault(room, set())
        joined, left = [], []
        for key, member in members.items():
            if member.sockets and key not in announced:
                announced.add(key)
                joined.append(member.public())
            elif not member.sockets and key in announced:
                announced.discard(key)
                left.append(member.public())
        if not announced:
            del self._announced[room]
        return joined, left


class _Script:
    """A Lua script, run by its SHA1 (sent whole only when Redis does not know it)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


# Set this instance's count of some users in one room; returns the users whose total went
# from 0 to more (joined) and from more to 0 (left), in one atomic step.
# KEYS: the room's hash, this instance's set of rooms, the set of instances.
# ARGV: instance, room, "1" if the instance still has users in the room, then per user:
#       key, sockets, name (JSON).
_WRITE = _Script("""
local hash, instance = KEYS[1], ARGV[1]
local joined, left = {}, {}
for i = 4, #ARGV, 3 do
  local user, new = ARGV[i], tonumber(ARGV[i + 1])
  local field = 's|' .. instance .. '|' .. user
  local old = tonumber(redis.call('HGET', hash, field) or '0')
  if new ~= old then
    if new > 0 then redis.call('HSET', hash, field, new) else redis.call('HDEL', hash, field) end
    local total = redis.call('HINCRBY', hash, 't|' .. user, new - old)
    local before = total - (new - old)
    if total <= 0 then
      redis.call('HDEL', hash, 't|' .. user, 'n|' .. user)
      if before > 0 then left[#left + 1] = user end
    elseif before <= 0 then
      redis.call('HSET', hash, 'n|' .. user, ARGV[i + 2])
      joined[#joined + 1] = user
    end
  end
end
if ARGV[3] == '1' then
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('SADD', KEYS[3], instance)
else
  redis.call('SREM', KEYS[2], ARGV[2])
end
return {joined, left}
""")

# Remove an instance's whole share: a dead one's (only if its key is still gone, and only
# for the one sweeper that takes it out of the set of instances) or this one's at shutdown.
# Returns, for each room hash given, the users who left: key, name, key, name, ...
# KEYS: the set of instances, the instance's key, its set of rooms, then room hashes.
# ARGV: instance, "1" to sweep a dead one (checked), "0" for this one.
_REMOVE = _Script("""
local instance, dead = ARGV[1], ARGV[2] == '1'
if dead and redis.call('EXISTS', KEYS[2]) == 1 then return false end
if redis.call('SREM', KEYS[1], instance) == 0 and dead then return false end
local mine = 's|' .. instance .. '|'
local result = {}
for k = 4, #KEYS do
  local hash, left = KEYS[k], {}
  local fields = redis.call('HGETALL', hash)
  for i = 1, #fields, 2 do
    local field = fields[i]
    if string.sub(field, 1, #mine) == mine then
      local user = string.sub(field, #mine + 1)
      redis.call('HDEL', hash, field)
      if redis.call('HINCRBY', hash, 't|' .. user, -tonumber(fields[i + 1])) <= 0 then
        left[#left + 1] = user
        left[#left + 1] = redis.call('HGET', hash, 'n|' .. user) or 'null'
        redis.call('HDEL', hash, 't|' .. user, 'n|' .. user)
      end
    end
  end
  result[#result + 1] = left
end
redis.call('DEL', KEYS[3])
return result
""")


class RedisPresence(Presence):
    """Every process's share in Redis, next to the backplane's instance keys (see above)."""

    def __init__(self, backplane: RedisBackplane, *, window: float = WINDOW) -> None:
        super().__init__(backplane.publish, window=window)
        self.backplane = backplane
        self.link = backplane.link
        self.instance = backplane.instance
        # A dead instance's users are reported `left` within ttl (+ this) of its death.
        self.check_interval = backplane.ttl / 10
        prefix = backplane.prefix
        self._room_prefix = prefix + "presence:"
        self._rooms_prefix = prefix + "presence-rooms:"
        self._instances_key = prefix + "presence-instances"
        self._sweep_after = 0.0
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.backplane.on_lost.append(self._lost)
        self.link.on_up.append(self._up)
        self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        await super().stop()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        # Leave at once, rather than when our key expires: the others hear it now.
        try:
            await self._remove(self.instance, dead=False)
        except (RedisUnavailable, ReplyError):
            pass  # swept by the others once our key expires

    async def users(self, room: str) -> list[dict[str, Any]]:
        try:
            fields: dict[bytes, bytes] = await self.link.call("HGETALL", self._room_prefix + room)
            counts: dict[bytes, dict[bytes, int]] = {}  # instance -> user key -> sockets
            names: dict[bytes, bytes] = {}
            for field, value in fields.items():
                kind, _, rest = field.partition(b"|")
                if kind == b"s":
                    instance, _, user = rest.partition(b"|")
                    counts.setdefault(instance, {})[user] = int(value)
                elif kind == b"n":
                    names[rest] = value
            me = self.instance.encode()
            others = [i for i in counts if i != me]
            alive = await self.link.call("MGET", *[self.backplane.instance_key(i.decode()) for i in others]) \
                if others else []
        except (RedisUnavailable, ReplyError):
            raise Unavailable("presence is unavailable while Redis is unreachable") from None
        users: dict[str, dict[str, Any]] = {}
        for instance, is_alive in zip(others, alive):
            if is_alive is None:
                continue  # a dead instance's sockets, not swept yet: not there any more
            for user, sockets in counts[instance].items():
                key = user.decode()
                entry = users.get(key)
                if entry is None:
                    entry = users[key] = {"id": orjson.loads(user), "name": orjson.loads(names.get(user, b"null")),
                                          "sockets": 0}
                entry["sockets"] += sockets
        for key, member in self._shares.get(room, {}).items():  # ours, from memory: the newest
            entry = users.get(key)
            if entry is None:
                users[key] = {"id": member.id, "name": member.name, "sockets": member.sockets}
            else:
                entry["sockets"] += member.sockets
        return _sorted(users.values())

    async def _write(self, room: str, members: dict[str, _Member]) -> Diff:
        args: list[str | int] = [self.instance, room, "1" if room in self._shares else "0"]
        for key, member in members.items():
            args += [key, member.sockets, orjson.dumps(member.name).decode()]
        keys = [self._room_prefix + room, self._rooms_prefix + self.instance, self._instances_key]
        try:
            joined, left = await self._eval(_WRITE, keys, args)
        except (RedisUnavailable, ReplyError) as exc:
            if isinstance(exc, ReplyError):
                log.error("the presence script failed on room %r: %s", room, exc)
            raise Unavailable("presence is unavailable while Redis is unreachable") from None
        return ([members[k.decode()].public() for k in joined],
                [members[k.decode()].public() for k in left])

    async def _eval(self, script: _Script, keys: list[str], args: Iterable[str | int]) -> Any:
        try:
            return await self.link.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.link.call("EVAL", script.text, len(keys), *keys, *args)

    async def _remove(self, instance: str, *, dead: bool) -> None:
        """Take `instance`'s share out of every room, and tell each room who left."""
        rooms = [r.decode() for r in await self.link.call("SMEMBERS", self._rooms_prefix + instance)]
        keys = [self._instances_key, self.backplane.instance_key(instance), self._rooms_prefix + instance,
                *[self._room_prefix + room for room in rooms]]
        result = await self._eval(_REMOVE, keys, [instance, "1" if dead else "0"])
        if result is None:
            return  # alive again, or another process swept it first
        if dead and rooms:
            log.info("instance %s is gone: its users left %d room(s)", instance, len(rooms))
        for room, left in zip(rooms, result):
            users = [{"id": orjson.loads(left[i]), "name": orjson.loads(left[i + 1])} for i in range(0, len(left), 2)]
            await self._announce(room, [], users)

    # -- background work --------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                self._schedule_if_dirty()  # writes that failed while Redis was away
                if time.monotonic() >= self._sweep_after:
                    await self._sweep()
            except (RedisUnavailable, ReplyError):
                pass
            except Exception:
                log.exception("looking for dead instances failed")

    async def _sweep(self) -> None:
        instances = [i.decode() for i in await self.link.call("SMEMBERS", self._instances_key)]
        others = [i for i in instances if i != self.instance]
        if not others:
            return
        alive = await self.link.call("MGET", *[self.backplane.instance_key(i) for i in others])
        for instance, is_alive in zip(others, alive):
            if is_alive is None:
                await self._remove(instance, dead=True)

    def _up(self) -> None:
        # Back from an outage: every key may have expired meanwhile, and the others renew
        # theirs only once THEIR link is back, which is up to a reconnect wait (plus one
        # attempt under way) after ours. Do not take them for dead before that: sweeping a
        # live instance reports its users `left` (a publish it misses, being still down),
        # and then `joined` again when it finds its key gone.
        self._sweep_after = time.monotonic() + max(self.backplane.ttl / 3, self.link.timeout + RECONNECT_GAP)
        self._schedule_if_dirty()

    def _lost(self) -> None:
        # Our key was gone: our share may have been swept (or Redis lost it). Write all of it
        # again; the users of it are reported `joined` again where they had been swept.
        for room, share in self._shares.items():
            self._dirty.setdefault(room, {}).update(share)
        self._schedule_if_dirty()


def presence_for(backplane: Backplane) -> Presence:
    """The presence that reaches as far as `backplane` does."""
    if isinstance(backplane, RedisBackplane):
        return RedisPresence(backplane)
    return LocalPresence(backplane.publish)


def _sorted(users: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(users, key=lambda u: (str(u["name"]), _key(u["id"])))
