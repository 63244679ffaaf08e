"""The bridge between aiohttp-session and the sockets (with `redis_sessions` for Redis).

The upgrade request goes through the same `session_middleware` as every HTTP route, so a
socket starts with the session its cookie names. After the upgrade the middleware can do
nothing more for the socket (it never saves on a websocket response), so reloads and
saves go to the storage directly. What each storage can do is protocol.md, "Sessions".
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import secrets
import time
from collections import Counter
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_session import STORAGE_KEY, AbstractStorage, Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from .errors import CloseConnection, SessionExpired, SessionReadOnly
from .http_errors import is_websocket_upgrade

log = logging.getLogger(__name__)

T = TypeVar("T")

# A random id kept in the session data names "this browser session" in both storages
# (the cookie storage has no identity of its own); only its hash ever leaves the server.
SID_KEY = "_sid"
# When the session was logged in (Unix time): it ends `max_age` after that, whatever is
# written to it since. (aiohttp-session moves a session's `created` to "now" on every
# write, so a session written to once a minute would otherwise never expire.)
LOGIN_KEY = "_login"
# The cookie the brief asks for; a bridge's keyword arguments override any of these.
COOKIE_DEFAULTS: dict[str, Any] = {"cookie_name": "session", "httponly": True, "samesite": "Lax", "path": "/"}
DAY = 86400


def session_deadline(session: Session, max_age: int) -> float:
    """When a session ends: `max_age` after its login (after its creation, if it has none)."""
    login = session.get(LOGIN_KEY)
    if type(login) is int or type(login) is float:
        return float(login) + max_age
    # aiohttp-session and Fernet count whole seconds: a session without a login time is
    # still valid during the second that ends `max_age` after it was created.
    return session.created + max_age + 1


def ended(session: Session, max_age: int) -> bool:
    return not session.empty and time.time() >= session_deadline(session, max_age)


class SessionHandle:
    """A socket's view of its session: the data, and when the session expires."""

    __slots__ = ("session", "deadline", "key", "raw")

    def __init__(self, session: Session, deadline: float, key: str | None) -> None:
        self.session = session
        # The stored value `session` was parsed from, when it came from a reload: the same
        # value again needs no parsing.
        self.raw: bytes | None = None
        # Fixed for the session's whole life: `max_age` after login.
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
        # Store operations that failed, by operation (read by server/metrics.py).
        self.errors: Counter[str] = Counter()

    def middleware(self) -> Any:
        """aiohttp-session's middleware, except for websocket upgrades: those get the
        storage only. The middleware could do nothing more for a socket (it never saves
        on a websocket response), and its frame would stay alive as long as the socket."""
        storage = self.storage
        inner = session_middleware(storage)

        @web.middleware
        def sessions(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
            if is_websocket_upgrade(request):
                request[STORAGE_KEY] = storage
                return handler(request)
            return inner(request, handler)

        return sessions

    async def open(self, request: web.Request) -> SessionHandle:
        """The session of an upgrade request, as the session middleware loaded it.

        Raises:
            Unavailable: the storage cannot be reached.
        """
        session = await self.get(request)
        return SessionHandle(session, session_deadline(session, self.max_age), self._key_of(session))

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
        return await get_session(request)

    async def modify(self, request: web.Request, fn: Callable[[dict[str, Any]], T]) -> T:
        """Apply `fn` to the session data of an HTTP request as one atomic read-modify-write.

        `fn` gets the data as a dict, changes it in place and returns what `modify` returns.
        Redis: applied to the stored session, so concurrent modifications of one session
        (from HTTP routes and sockets, in any process) are never lost. Cookies: applied to
        the request's copy, saved with the response; concurrent requests of one browser
        each change the cookie they were sent, and the last response wins.

        Raises:
            Unavailable: the storage cannot be reached.
            Whatever `fn` raises (nothing is changed).
        """
        session = await self.get(request)
        data = copy.deepcopy(dict(session))
        result = fn(data)
        for name in [name for name in session if name not in data]:
            del session[name]
        session.update(data)
        return result

    async def modify_stored(self, handle: SessionHandle, fn: Callable[[dict[str, Any]], T]) -> T:
        """`modify` for a socket's session: applied to the stored session and persisted.

        Raises:
            SessionReadOnly: this storage cannot save from a socket.
            LoggedOut: the session is gone.
            Unavailable: the storage cannot be reached (nothing changed).
        """
        raise SessionReadOnly(
            "this server keeps sessions in cookies, which a socket cannot write; "
            "change the session over HTTP"
        )

    async def update(self, handle: SessionHandle, changes: dict[str, Any]) -> None:
        """Set keys of a socket's stored session, all or nothing (`modify_stored` with `dict.update`)."""
        await self.modify_stored(handle, lambda data: data.update(changes))

    async def rotate(self, request: web.Request) -> tuple[Session, Session]:
        """Start a new session with a new identity (at login); returns (new, old).

        The response of `request` carries the new cookie.
        """
        old = await self.get(request)
        await self._forget(old)
        session = await new_session(request)
        session[SID_KEY] = secrets.token_urlsafe(24)
        session[LOGIN_KEY] = time.time()
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
    """Sessions in an encrypted cookie: nothing on the server, so sockets hold a snapshot.

    Args:
        key: a Fernet key (`new_key()` makes one; keep it secret and stable, or every
            restart logs everyone out), or a `Fernet`.
        max_age: seconds a session lives after login.
        cookie: aiohttp-session cookie options over `COOKIE_DEFAULTS` (`cookie_name`,
            `secure`, `domain`, ...).
    """

    def __init__(self, key: Fernet | bytes | str, max_age: int = DAY, **cookie: Any) -> None:
        fernet = key if isinstance(key, Fernet) else Fernet(key)
        storage = _CookieStorage(RememberingFernet(fernet), max_age=max_age, **{**COOKIE_DEFAULTS, **cookie})
        super().__init__(storage, max_age)


def new_key() -> bytes:
    """A new random key for `CookieSessionBridge`."""
    return Fernet.generate_key()


class _CookieStorage(EncryptedCookieStorage):
    """aiohttp-session's cookie storage, with sessions that end `max_age` after login.

    Every write encrypts the cookie anew, and Fernet's TTL counts from the encryption, so
    the login time in the session decides; the cookie's `Max-Age` is what is left of it.
    """

    async def load_session(self, request: web.Request) -> Session:
        session = await super().load_session(request)
        if self.max_age is not None and ended(session, self.max_age):
            return Session(None, data=None, new=True, max_age=self.max_age)
        return session

    async def save_session(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        if self.max_age is not None and not session.empty:
            left = session_deadline(session, self.max_age) - time.time()
            if left <= 0:
                self.save_cookie(response, "", max_age=session.max_age)
                return
            session.max_age = math.ceil(left)
        await super().save_session(request, response, session)


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
