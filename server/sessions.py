"""The bridge between aiohttp-session and the sockets: the only module that imports it.

The upgrade request goes through the same `session_middleware` as every HTTP route, so a
socket starts with the session its cookie names. After the upgrade the middleware can do
nothing more for the socket (it never saves on a websocket response), so reloads and
saves go to the storage directly. What each storage can do is protocol.md, "Sessions".
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from typing import Any, Callable, Iterable

from aiohttp import web
from aiohttp_session import AbstractStorage, Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from aiohttp_session.redis_storage import RedisStorage
from cryptography.fernet import Fernet
from redis.asyncio import Redis
from redis.asyncio.connection import Connection as RedisConnection
from redis.exceptions import RedisError

from .errors import CloseConnection, LoggedOut, SessionExpired, SessionReadOnly, Unavailable
from .redis_tracking import NotTracking, TrackingCache

log = logging.getLogger(__name__)

# A random id kept in the session data names "this browser session" in both storages
# (the cookie storage has no identity of its own); only its hash ever leaves the server.
SID_KEY = "_sid"


class SessionHandle:
    """A socket's view of its session: the data, and when the session expires."""

    __slots__ = ("session", "deadline", "key", "raw")

    def __init__(self, session: Session, deadline: float, key: str | None) -> None:
        self.session = session
        # The stored value `session` was parsed from, when it came from a reload: the same
        # value again needs no parsing.
        self.raw: bytes | None = None
        # aiohttp-session expires a session `max_age` after it was created, whatever the
        # storage, so the deadline is fixed for the session's whole life.
        self.deadline = deadline
        self.key = key


def session_tag(session: Session | dict[str, Any]) -> str | None:
    """A stable, non-secret name for a session (for room names), or None if it has none."""
    sid = session.get(SID_KEY)
    if sid is None:
        return None
    return hashlib.sha256(sid.encode()).hexdigest()[:32]


class SessionBridge:
    """Loads, reloads, saves, rotates and destroys sessions for HTTP routes and sockets."""

    storage: AbstractStorage

    def __init__(self, storage: AbstractStorage, max_age: int) -> None:
        self.storage = storage
        self.max_age = max_age

    def middleware(self) -> Any:
        return session_middleware(self.storage)

    async def open(self, request: web.Request) -> SessionHandle:
        """The session of an upgrade request, as the session middleware loaded it.

        Raises:
            Unavailable: the storage cannot be reached.
        """
        session = await self.get(request)
        # Both aiohttp-session and Fernet count whole seconds: the session is still valid
        # during the second that ends `max_age` after it was created.
        return SessionHandle(session, session.created + self.max_age + 1, self._key_of(session))

    async def reload(self, handle: SessionHandle) -> None:
        """Refresh `handle.session` from the storage.

        Raises:
            SessionExpired: the session is past its `max_age`.
            LoggedOut: the session was destroyed.
            Unavailable: the storage cannot be reached.
        """
        if time.time() >= handle.deadline:
            raise SessionExpired()

    async def check(self, handles: Iterable[SessionHandle]) -> list[tuple[SessionHandle, CloseConnection]]:
        """Which of these sessions have ended, and how; used by the periodic sweep."""
        now = time.time()
        return [(h, SessionExpired()) for h in handles if now >= h.deadline]

    async def get(self, request: web.Request) -> Session:
        """The session of an HTTP request (changes are saved with its response).

        Raises:
            Unavailable: the storage cannot be reached.
        """
        try:
            return await get_session(request)
        except RedisError:
            raise Unavailable("the session store is unavailable; try again shortly") from None

    async def update(self, handle: SessionHandle, changes: dict[str, Any]) -> None:
        """Apply `changes` to a socket's session and persist them; all or nothing.

        Raises:
            SessionReadOnly: this storage cannot save from a socket.
            Unavailable: the storage cannot be reached (nothing changed).
        """
        raise SessionReadOnly(
            "this server keeps sessions in cookies, which a socket cannot write; "
            "change the session over HTTP"
        )

    async def rotate(self, request: web.Request) -> tuple[Session, Session]:
        """Start a new session with a new identity (at login); returns (new, old).

        The response of `request` carries the new cookie.
        """
        old = await self.get(request)
        await self._forget(old)
        session = await new_session(request)
        session[SID_KEY] = secrets.token_urlsafe(24)
        return session, old

    async def destroy(self, request: web.Request) -> dict[str, Any]:
        """End the session of `request` (at logout); returns a copy of what it held."""
        session = await self.get(request)
        gone = dict(session)
        await self._forget(session)
        session.invalidate()
        return gone

    async def ping(self) -> bool:
        """Whether the storage is usable now."""
        return True

    async def start(self) -> None:
        """Start background work (at application start-up)."""

    async def close(self) -> None:
        """Release the storage's connections."""

    def _key_of(self, session: Session) -> str | None:
        return None

    async def _forget(self, session: Session) -> None:
        """Delete what the server holds of `session`."""


class CookieSessionBridge(SessionBridge):
    """Sessions in an encrypted cookie: nothing on the server, so sockets hold a snapshot."""

    def __init__(self, fernet: Fernet, max_age: int, **cookie: Any) -> None:
        storage = EncryptedCookieStorage(RememberingFernet(fernet), max_age=max_age, **cookie)
        super().__init__(storage, max_age)


class RememberingFernet(Fernet):
    """A Fernet that remembers the tokens it has decrypted.

    Every request and every upgrade of a browser sends the same cookie, and decrypting it
    (HMAC and AES through `cryptography`) is the largest part of loading a cookie session.
    A token is immutable and unforgeable, so its plaintext can be kept; the TTL is checked
    against the token's own timestamp on every use, as Fernet does.
    """

    def __init__(self, fernet: Fernet, max_entries: int = 10_000) -> None:  # no super(): it wants the key
        self._fernet = fernet
        self._max_entries = max_entries
        self._plain: dict[bytes, tuple[int, bytes]] = {}

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes | str, ttl: int | None = None) -> bytes:
        key = token.encode() if isinstance(token, str) else token
        remembered = self._plain.get(key)
        if remembered is not None and (ttl is None or remembered[0] + ttl >= time.time()):
            return remembered[1]
        plain = self._fernet.decrypt(key, ttl)  # raises InvalidToken, expired ones included
        if len(self._plain) >= self._max_entries:
            self._plain.clear()
        self._plain[key] = (self._fernet.extract_timestamp(key), plain)
        return plain


class _RedisStorage(RedisStorage):
    """aiohttp-session's Redis storage, with writes that cannot bring a session back.

    aiohttp-session writes a request's session back whether or not it still exists, so a
    request that was running while its session was logged out would store it again, user
    and all, with a fresh TTL. Here a session that already had a key is written only if the
    key is still there; an emptied session is deleted rather than stored as "{}".
    """

    def __init__(self, redis: Redis, *, written: Callable[[str], None], **kw: Any) -> None:
        super().__init__(redis, **kw)
        self._written = written
        self._set_if_exists = redis.register_script(
            "if redis.call('EXISTS', KEYS[1]) == 1 then "
            "return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end "
            "return false"
        )

    async def save_session(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        if session.identity is None:  # a new session: a new key
            await super().save_session(request, response, session)
            return
        key = f"{self.cookie_name}_{session.identity}"
        try:
            if session.empty:
                await self._redis.delete(key)
                self.save_cookie(response, "", max_age=session.max_age)
                return
            data = self._encoder(self._get_session_data(session))
            if await self._set_if_exists(keys=[key], args=[data, session.max_age or self.max_age]):
                self.save_cookie(response, session.identity, max_age=session.max_age)
        finally:
            self._written(key)


class RedisSessionBridge(SessionBridge):
    """Sessions in Redis: a socket sees HTTP changes on reload and can save its own."""

    def __init__(self, redis: Redis, max_age: int, *, cache: bool = True, **cookie: Any) -> None:
        # Reloads read through a cache that Redis invalidates (see `redis_tracking`), over
        # TCP only: other connections (unix sockets, TLS) read Redis on every reload.
        self.cache = _tracking_cache(redis) if cache else None
        storage = _RedisStorage(redis, max_age=max_age, encoder=json.dumps, decoder=json.loads,
                                written=self._written, **cookie)
        super().__init__(storage, max_age)
        self.redis = redis
        self._prefix = storage.cookie_name + "_"

    async def start(self) -> None:
        if self.cache is not None:
            await self.cache.start()

    async def reload(self, handle: SessionHandle) -> None:
        await super().reload(handle)
        key = handle.key
        if key is None:
            return  # an anonymous socket: nothing stored to reload
        raw: bytes | None
        try:
            if self.cache is None:
                raise NotTracking()
            raw = await self.cache.get(key)
        except NotTracking:
            try:
                raw = await self.redis.get(key)
            except RedisError as exc:
                log.warning("session reload failed: %s", exc)
                raise Unavailable("the session store is unavailable; try again shortly") from None
        if raw is not None and raw is handle.raw:
            return  # unchanged since the last reload
        handle.session = self._replace(handle, raw)
        handle.raw = raw

    async def check(self, handles: Iterable[SessionHandle]) -> list[tuple[SessionHandle, CloseConnection]]:
        stored = [h for h in handles if h.key is not None]
        ended = await super().check(stored)
        if not stored:
            return ended
        expired = {id(h) for h, _ in ended}
        live = [h for h in stored if id(h) not in expired]
        try:
            values = await self.redis.mget([h.key for h in live]) if live else []
        except RedisError as exc:
            log.warning("session check failed: %s", exc)
            return ended  # an outage ends no session: the next sweep looks again
        for handle, raw in zip(live, values):
            try:
                handle.session = self._replace(handle, raw)
                handle.raw = raw
            except CloseConnection as exc:
                ended.append((handle, exc))
        return ended

    async def update(self, handle: SessionHandle, changes: dict[str, Any]) -> None:
        if handle.key is None:
            raise SessionReadOnly("this socket has no stored session to save")
        key = handle.key

        async def merge(pipe: Any) -> bytes | None:
            # Onto the stored session, not the socket's copy: keys this write does not
            # change keep what other writers stored; a deleted session stays deleted.
            raw = await pipe.get(key)
            if raw is None:
                return None
            stored = json.loads(raw)
            stored["session"].update(changes)
            value = json.dumps(stored).encode()
            pipe.multi()
            pipe.set(key, value, keepttl=True)
            return value

        try:
            value = await self.redis.transaction(merge, key, value_from_callable=True)
        except RedisError:
            raise Unavailable("the session store is unavailable; nothing was saved") from None
        finally:
            self._written(key)  # even a failed write may have been applied
        handle.session = self._replace(handle, value)  # raises if the session is gone

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except RedisError:
            return False

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()
        await self.redis.aclose()

    def _written(self, key: str) -> None:
        if self.cache is not None:
            self.cache.forget(key)

    def _key_of(self, session: Session) -> str | None:
        return None if session.identity is None else self._prefix + session.identity

    async def _forget(self, session: Session) -> None:
        key = self._key_of(session)
        if key is not None:
            try:
                await self.redis.delete(key)
            except RedisError:
                raise Unavailable("the session store is unavailable; try again shortly") from None
            finally:
                self._written(key)

    def _replace(self, handle: SessionHandle, raw: bytes | None) -> Session:
        if raw is None:
            # Both end the same way; the deadline tells which one it was.
            raise SessionExpired() if time.time() >= handle.deadline - 1 else LoggedOut()
        session = Session(handle.session.identity, data=json.loads(raw), new=False, max_age=self.max_age)
        if session.empty:
            raise LoggedOut()
        return session


def _tracking_cache(redis: Redis) -> TrackingCache | None:
    pool = redis.connection_pool
    kw = pool.connection_kwargs
    if pool.connection_class is not RedisConnection or "host" not in kw:
        return None
    return TrackingCache(kw["host"], int(kw.get("port", 6379)), int(kw.get("db", 0) or 0),
                         username=kw.get("username"), password=kw.get("password"))
