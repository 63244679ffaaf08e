"""Sessions in Redis: a socket sees HTTP changes on reload, and can save its own.

The storage keeps aiohttp-session's Redis layout (key `<cookie_name>_<identity>`, value
`{"created", "session"}`, `EX max_age`), so it can replace aiohttp-session's
`RedisStorage` in place, but every command goes through the process's `RedisLink`
(pipelined, bounded in time) and reads through its `TrackingCache`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import time
import uuid
from collections import Counter
from typing import Any, Callable, Iterable, TypeVar

from aiohttp import web
from aiohttp_session import AbstractStorage, Session

from .errors import CloseConnection, LoggedOut, SessionExpired, SessionReadOnly, Unavailable
from .http_errors import json_error
from .redis_link import RedisLink, RedisUnavailable
from .redis_tracking import MISSING, Missing, TrackingCache
from .resp import ReplyError
from .sessions import COOKIE_DEFAULTS, DAY, SessionBridge, SessionHandle, ended, session_deadline

log = logging.getLogger(__name__)

# How long a logout waits for a replica to have it, with Sentinel (milliseconds).
REPLICA_WAIT_MS = 50

T = TypeVar("T")

# A write of a session that already has a key stores it only if the key is still there:
# a request that ran while its session was logged out must not store it again.
# It keeps the key's expiry: a session ends `max_age` after login, whatever is written.
_SET_IF_EXISTS = ("if redis.call('EXISTS', KEYS[1]) == 1 then "
                  "return redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL') end return false")
# Compare-and-set: store ARGV[2] only if the key still holds ARGV[1] (what was read).
_COMPARE_AND_SET = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                    "redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') return 1 end return 0")
# Rounds of compare-and-set lost to writers in other processes before a modify gives up.
_MAX_ROUNDS = 50


def _unavailable(what: str = "try again shortly") -> Unavailable:
    # The cause stays out of the client's message; the link logs it once per outage.
    return Unavailable(f"the session store is unavailable; {what}")


class RedisStorage(AbstractStorage):
    """aiohttp-session storage on a `RedisLink`; writes cannot bring a session back.

    aiohttp-session's own Redis storage writes a request's session back whether or not
    it still exists, so a request that was running while its session was logged out
    would store it again, user and all, with a fresh TTL. Here a session that already had
    a key is written only if the key is still there; an emptied session is deleted.
    """

    def __init__(self, link: RedisLink, cache: TrackingCache | None, **kw: Any) -> None:
        super().__init__(**kw)
        self.link = link
        self.cache = cache
        self.prefix = self.cookie_name + "_"
        self.errors: Counter[str] = Counter()  # failed operations, by operation (for metrics)

    def key(self, identity: str) -> str:
        return self.prefix + identity

    def cached(self, key: str) -> bytes | None | Missing:
        """The value of `key` if the cache has it, else MISSING (then `read` it).

        Raises:
            Unavailable: Redis is unreachable.
        """
        if self.cache is None:
            return MISSING
        try:
            return self.cache.cached(key)
        except RedisUnavailable:
            self.errors["read"] += 1
            raise _unavailable() from None

    async def read(self, key: str) -> bytes | None:
        """The stored value of `key`, through the cache when there is one.

        Raises:
            Unavailable: Redis is unreachable or did not answer in time.
        """
        try:
            if self.cache is not None:
                return await self.cache.get(key)
            value: bytes | None = await self.link.call("GET", key)
            return value
        except (RedisUnavailable, ReplyError):
            self.errors["read"] += 1
            raise _unavailable() from None

    async def write(self, *command: Any, key: str) -> Any:
        """Send a command that changes `key`; this process's cache forgets the key.

        Raises:
            Unavailable: Redis is unreachable or did not answer in time (the write may or
                may not have been applied).
        """
        try:
            return await self.link.call(*command)
        except (RedisUnavailable, ReplyError):
            self.errors["write"] += 1
            raise _unavailable("nothing was saved") from None
        finally:
            self.written(key)  # even a failed write may have been applied

    def written(self, key: str) -> None:
        if self.cache is not None:
            self.cache.forget(key)

    async def load_session(self, request: web.Request) -> Session:
        identity = self.load_cookie(request)
        if identity is None:
            return Session(None, data=None, new=True, max_age=self.max_age)
        raw = await self.read(self.key(identity))
        if raw is None:
            return Session(None, data=None, new=True, max_age=self.max_age)
        try:
            data = self._decoder(raw.decode())
        except ValueError:
            data = None
        session = Session(identity, data=data, new=False, max_age=self.max_age)
        if self.max_age is not None and ended(session, self.max_age):  # Redis expires it any moment
            return Session(None, data=None, new=True, max_age=self.max_age)
        return session

    async def save_session(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        assert self.max_age is not None, "Redis sessions need a max_age"
        left = session_deadline(session, self.max_age) - time.time()
        cookie_age = max(math.ceil(left), 0)
        if session.identity is None:  # a new session: a new key, that expires `max_age` after login
            if session.empty or left <= 0:
                return
            identity = uuid.uuid4().hex
            value = self._encoder(self._get_session_data(session))
            await self.write("SET", self.key(identity), value, "PX", int(left * 1000), key=self.key(identity))
            self.save_cookie(response, identity, max_age=cookie_age)
            return
        key = self.key(session.identity)
        if session.empty or left <= 0:
            await self.write("DEL", key, key=key)
            self.save_cookie(response, "", max_age=session.max_age)
            return
        value = self._encoder(self._get_session_data(session))
        if await self.write("EVAL", _SET_IF_EXISTS, 1, key, value, key=key):
            self.save_cookie(response, session.identity, max_age=cookie_age)


class _Modifications:
    """Read-modify-writes of session keys: queued per key, applied in rounds, compare-and-set.

    Every function queued for a key while a round is being read and written joins the
    next round, so a thousand concurrent increments cost a few rounds, not a thousand.
    A round that loses its compare-and-set to another process is read and applied again.
    """

    def __init__(self, storage: RedisStorage) -> None:
        self._storage = storage
        self._queues: dict[str, list[tuple[Callable[[dict[str, Any]], Any], asyncio.Future[Any]]]] = {}

    async def apply(self, key: str, fn: Callable[[dict[str, Any]], T]) -> tuple[T, bytes]:
        """Apply `fn` to the stored session data of `key`; returns (its result, the stored value).

        Raises:
            LoggedOut: there is no stored session (destroyed or expired).
            Unavailable: Redis is unreachable (nothing changed, or the outcome is unknown).
            Whatever `fn` raises (nothing of this call is stored).
        """
        future: asyncio.Future[tuple[T, bytes]] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = [(fn, future)]
            asyncio.get_running_loop().create_task(self._run(key))
        else:
            queue.append((fn, future))
        return await future

    async def _run(self, key: str) -> None:
        queue = self._queues[key]
        storage = self._storage
        lost = 0
        try:
            while queue:
                raw = await storage.read(key)
                if raw is None:
                    raise LoggedOut()
                stored = json.loads(raw)
                data = stored.get("session", {})
                round_ = list(queue)
                outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
                for fn, future in round_:
                    trial = copy.deepcopy(data)
                    try:
                        result = fn(trial)
                    except Exception as exc:  # this function's changes are dropped, the others' kept
                        outcomes.append((future, None, exc))
                        continue
                    data = trial
                    outcomes.append((future, result, None))
                value = json.dumps({**stored, "session": data}).encode()
                applied = any(error is None for _, _, error in outcomes)
                if applied and not await storage.write("EVAL", _COMPARE_AND_SET, 1, key, raw, value, key=key):
                    lost += 1  # another process wrote first: read again, apply again
                    if lost >= _MAX_ROUNDS:
                        raise Unavailable("the session is changed too often by other processes; try again")
                    continue
                lost = 0
                del queue[:len(round_)]
                for future, result, error in outcomes:
                    if future.done():
                        continue
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result((result, value))
        except BaseException as exc:
            for _, future in queue:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            del self._queues[key]


class RedisSessionBridge(SessionBridge):
    """Sessions in Redis: a socket sees HTTP changes on reload and can save its own.

    Args:
        link: the process's link to Redis; with `tracking=True`, reloads are answered from
            a cache that Redis invalidates (`redis_tracking`), else each reads Redis.
        max_age: seconds a session lives after login.
        cookie: aiohttp-session cookie options over `COOKIE_DEFAULTS` (`cookie_name`, `secure`, ...).
    """

    def __init__(self, link: RedisLink, max_age: int = DAY, **cookie: Any) -> None:
        self.link = link
        self.cache = TrackingCache(link) if link.tracking else None
        storage = RedisStorage(link, self.cache, max_age=max_age, **{**COOKIE_DEFAULTS, **cookie})
        super().__init__(storage, max_age)
        self._store = storage
        self.errors = storage.errors  # one count for the bridge and its storage
        self._modifications = _Modifications(storage)

    @classmethod
    def from_url(cls, url: str, max_age: int = DAY, *, timeout: float = 1.5, **cookie: Any) -> RedisSessionBridge:
        """Sessions in the Redis at `url` (redis://, rediss://, unix://), reloads cached.

        `timeout`: seconds without an answer from Redis after which it counts as down.
        """
        return cls(RedisLink.from_url(url, timeout=timeout, tracking=True), max_age, **cookie)

    async def start(self) -> None:
        await self.link.start()

    async def close(self) -> None:
        await self.link.close()

    async def ping(self) -> bool:
        return await self.link.ping()

    async def reload(self, handle: SessionHandle) -> None:
        await super().reload(handle)
        if handle.key is None:
            return  # an anonymous socket: nothing stored to reload
        # Most reloads are answered by the cache: without a coroutine to wait for.
        raw = self._store.cached(handle.key)
        if raw is MISSING:
            raw = await self._store.read(handle.key)
        if raw is not None and raw is handle.raw:
            return  # unchanged since the last reload
        handle.session = self._replace(handle, raw)
        handle.raw = raw

    async def check(self, handles: Iterable[SessionHandle]) -> list[tuple[SessionHandle, CloseConnection]]:
        stored = [h for h in handles if h.key is not None]
        ended = await super().check(stored)
        expired = {id(h) for h, _ in ended}
        live = [h for h in stored if id(h) not in expired]
        if not live:
            return ended
        try:
            values = await self.link.call("MGET", *[h.key for h in live if h.key is not None])
        except (RedisUnavailable, ReplyError) as exc:
            self.errors["check"] += 1
            log.info("session check skipped: %s", exc)
            return ended  # an outage ends no session: the next sweep looks again
        for handle, raw in zip(live, values):
            try:
                handle.session = self._replace(handle, raw)
                handle.raw = raw
            except CloseConnection as exc:
                ended.append((handle, exc))
        return ended

    async def modify(self, request: web.Request, fn: Callable[[dict[str, Any]], T]) -> T:
        session = await self.get(request)
        if session.identity is None or session.new:
            return await super().modify(request, fn)  # not stored yet: saved with the response
        try:
            result, value = await self._modifications.apply(self._store.key(session.identity), fn)
        except LoggedOut:
            raise json_error(web.HTTPUnauthorized, "unauthorized", "the session has ended; log in again") from None
        # The request's copy shows what was stored, and is not written back by the
        # session middleware for this (it would store the whole session again).
        session._mapping.clear()
        session._mapping.update(json.loads(value)["session"])
        return result

    async def modify_stored(self, handle: SessionHandle, fn: Callable[[dict[str, Any]], T]) -> T:
        if handle.key is None:
            raise SessionReadOnly("this socket has no stored session to save")
        result, value = await self._modifications.apply(handle.key, fn)
        handle.session = self._replace(handle, value)
        handle.raw = None
        return result

    def _key_of(self, session: Session) -> str | None:
        return None if session.identity is None else self._store.key(session.identity)

    async def _forget(self, session: Session) -> None:
        key = self._key_of(session)
        if key is not None:
            await self._store.write("DEL", key, key=key)
            if self.link.address.sentinels:
                await self._replicated()

    async def _replicated(self) -> None:
        # With Sentinel, a logout (or the end of a session replaced at login) must outlive
        # a failover: it waits until a replica has it. WAIT holds up the link's other
        # commands meanwhile, so it is short, and skipped when the master has no replica.
        if not self.link.replicas:
            log.warning("a logout reached no replica (the master has none connected): "
                        "a failover now would undo it")
            return
        try:
            acked = await self.link.call("WAIT", 1, REPLICA_WAIT_MS)
        except (RedisUnavailable, ReplyError):
            return  # the link is down: nothing more to do
        if not acked:
            log.warning("a logout reached no replica within %d ms: a failover now would undo it", REPLICA_WAIT_MS)

    def _replace(self, handle: SessionHandle, raw: bytes | None) -> Session:
        if raw is None:
            # Both end the same way; the deadline tells which one it was.
            raise SessionExpired() if time.time() >= handle.deadline - 0.5 else LoggedOut()
        session = Session(handle.session.identity, data=json.loads(raw), new=False, max_age=self.max_age)
        if session.empty:
            raise LoggedOut()
        return session
