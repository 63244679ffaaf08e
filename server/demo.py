"""The demo app: login/logout, a session counter, notifications, rooms and chat.

Written only against the public API (`Hub`, `Socket`, `SessionBridge`), as an app of
yours would be.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, TypeGuard

from aiohttp import web

from .codes import CloseCode
from .errors import Forbidden, InvalidData, RequestFailed
from .history import parse_since
from .http_errors import json_error
from .hub import Hub, session_room, user_room
from .limits import LoginThrottle, Tarpit
from .responses import json_then
from .sockets import Socket

ROOM_NAME = re.compile(r"[a-z0-9_-]{1,32}")
MAX_CONFIRM_TIMEOUT = 60
MAX_TEXT = 2000
MAX_USERNAME, MAX_PASSWORD = 64, 1024
# Rooms only some users may join, to show `hub.authorize_join`.
STAFF_ROOMS = frozenset({"staff"})
STAFF = frozenset({"alice"})
INDEX = Path(__file__).resolve().parent / "static" / "index.html"


class LoginsBusy(Exception):
    """More logins wait for a password check than the server queues."""


class Users:
    """Demo accounts with scrypt-hashed passwords; `check` returns the public user object.

    scrypt takes about 60 ms of CPU on purpose, so it never runs on the event loop: the
    hashes are computed in one worker thread (hashlib releases the GIL while it works), the
    accounts' own at start-up in the background, and at most `max_waiting` logins wait for
    it; past that, `check` raises `LoginsBusy` at once.
    """

    def __init__(self, passwords: Mapping[str, str], *, max_waiting: int = 32) -> None:
        self._passwords = dict(passwords)
        self._accounts: dict[str, tuple[int, bytes, asyncio.Future[bytes]]] = {}
        self._decoy: tuple[int, bytes, asyncio.Future[bytes]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._max_waiting = max_waiting
        self._waiting = 0

    def start(self) -> None:
        """Hash the accounts' passwords in the background (at application start-up)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="password-hash")
        for number, (name, password) in enumerate(self._passwords.items(), start=1):
            salt = os.urandom(16)
            self._accounts[name] = (number, salt, self._hashing(password, salt))
        # Unknown names are checked against this, so they cost as much as a wrong password.
        self._decoy = (0, os.urandom(16), self._hashing("", b""))

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def check(self, name: str, password: str) -> dict[str, Any] | None:
        """The user, if `password` is theirs.

        Raises:
            LoginsBusy: too many logins are waiting already.
        """
        assert self._decoy is not None, "Users.start() was not called"
        if self._waiting >= self._max_waiting:
            raise LoginsBusy()
        number, salt, digest = self._accounts.get(name, self._decoy)
        self._waiting += 1
        try:
            given = await self._hashing(password, salt)
            if hmac.compare_digest(given, await digest) and number:
                return {"id": number, "name": name}
            return None
        finally:
            self._waiting -= 1

    def _hashing(self, password: str, salt: bytes) -> asyncio.Future[bytes]:
        return asyncio.get_running_loop().run_in_executor(self._executor, _hash, password, salt)


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)


def _text(value: Any, longest: int) -> TypeGuard[str]:
    """A string of at most `longest` characters that is valid Unicode (no lone surrogates)."""
    if type(value) is not str or len(value) > longest:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def now_ms() -> int:
    return int(time.time() * 1000)


def setup_demo(app: web.Application, hub: Hub, passwords: Mapping[str, str]) -> None:
    users = Users(passwords)
    throttle = LoginThrottle()
    tarpit = Tarpit()
    sessions = hub.sessions
    routes = web.RouteTableDef()

    async def logged_in(request: web.Request) -> tuple[Any, dict[str, Any]]:
        session = await sessions.get(request)
        user = session.get("user")
        if user is None:
            raise json_error(web.HTTPUnauthorized, "unauthorized", "log in first")
        return session, user

    async def json_object(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if type(body) is not dict:
            raise json_error(web.HTTPBadRequest, "bad_request", "the body must be a JSON object")
        return body

    @routes.get("/")
    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(INDEX)

    @routes.post("/api/login")
    async def login(request: web.Request) -> web.Response:
        body = await json_object(request)
        name, password = body.get("username"), body.get("password")
        if not _text(name, MAX_USERNAME) or not _text(password, MAX_PASSWORD):
            raise json_error(web.HTTPBadRequest, "bad_request",
                             f'"username" and "password" must be strings of at most {MAX_USERNAME} and '
                             f'{MAX_PASSWORD} characters')
        address = request.remote or ""
        wait = throttle.attempt(name, address)
        if wait:
            seconds = math.ceil(wait)
            await tarpit.hold()
            raise json_error(web.HTTPTooManyRequests, "rate_limited",
                             f"too many failed logins; try again in {seconds} s", {"Retry-After": str(seconds)})
        try:
            user = await users.check(name, password)
        except LoginsBusy:
            throttle.undo(name, address)  # not checked: it does not count
            await tarpit.hold()
            raise json_error(web.HTTPServiceUnavailable, "unavailable", "too many logins at once; try again",
                             {"Retry-After": "1"}) from None
        if user is None:
            throttle.failed(name, address)
            raise json_error(web.HTTPUnauthorized, "bad_credentials", "wrong username or password")
        throttle.succeeded(name, address)
        session, old = await sessions.rotate(request)
        session["user"] = user
        return json_then({"user": user}, lambda: hub.disconnect_session(old, CloseCode.SESSION_REPLACED))

    @routes.post("/api/logout")
    async def logout(request: web.Request) -> web.Response:
        ended = await sessions.destroy(request)
        await hub.disconnect_session(ended, CloseCode.LOGGED_OUT)
        return web.json_response({"ok": True})

    @routes.get("/api/me")
    async def me(request: web.Request) -> web.Response:
        session, user = await logged_in(request)
        return web.json_response({"user": user, "count": session.get("count", 0)})

    @routes.post("/api/incr")
    async def incr(request: web.Request) -> web.Response:
        session, _ = await logged_in(request)
        count = await sessions.modify(request, count_one)
        await hub.emit("count", {"count": count}, room=session_room(session))
        return web.json_response({"count": count})

    @routes.post("/api/notify")
    async def notify(request: web.Request) -> web.Response:
        _, user = await logged_in(request)
        message = (await json_object(request)).get("message")
        if type(message) is not str or not 0 < len(message) <= MAX_TEXT:
            raise json_error(web.HTTPBadRequest, "bad_request",
                             f'"message" must be a string of 1 to {MAX_TEXT} characters')
        await hub.emit("notification", {"message": message, "ts": now_ms()}, room=user_room(user["id"]))
        return web.json_response({"ok": True})

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        if await sessions.ping() and hub.backplane.healthy:
            return web.json_response({"ok": True})
        return web.json_response({"ok": False, "error": {"code": "unavailable",
                                                          "message": "Redis is unreachable"}}, status=503)

    app.add_routes(routes)

    async def hash_passwords(app: web.Application) -> None:
        users.start()

    async def stop_hashing(app: web.Application) -> None:
        users.stop()

    app.on_startup.append(hash_passwords)
    app.on_cleanup.append(stop_hashing)

    @hub.on("whoami")
    async def whoami(socket: Socket, data: Any) -> dict[str, Any]:
        return {"user": socket.user, "rooms": sorted(public_rooms(socket))}

    @hub.on("session")
    async def session_snapshot(socket: Socket, data: Any) -> dict[str, Any]:
        # What this socket holds: a snapshot from the upgrade (cookie storage), or the
        # stored session as reloaded before this event (Redis storage).
        return {"session": {k: v for k, v in socket.session.items() if not k.startswith("_")}}

    @hub.authorize_join
    async def staff_only(socket: Socket, room: str) -> bool:
        if room in STAFF_ROOMS and (socket.user or {}).get("name") not in STAFF:
            raise Forbidden(f"only staff may join {room!r}")
        return True

    @hub.on("echo")
    async def echo(socket: Socket, data: Any) -> Any:
        return data

    @hub.on("join")
    async def join(socket: Socket, data: Any) -> dict[str, Any]:
        room = room_of(data)
        # With `since`, the room's events the client missed come first (protocol.md, "Recovery").
        joined = await socket.join(room, since=parse_since(data.get("since")))
        return {"room": room, "members": await hub.count(room), **joined.ack()}

    @hub.on("leave")
    async def leave(socket: Socket, data: Any) -> dict[str, Any]:
        room = room_of(data)
        await socket.leave(room)
        return {"room": room, "members": await hub.count(room)}

    @hub.on("chat")
    async def chat(socket: Socket, data: Any) -> dict[str, Any]:
        room = room_of(data)
        text = data.get("text")
        if type(text) is not str or not 0 < len(text) <= MAX_TEXT:
            raise InvalidData(f'"text" must be a string of 1 to {MAX_TEXT} characters')
        if room not in socket.rooms:
            raise Forbidden(f"join {room!r} before chatting in it")
        await hub.emit("chat", {"room": room, "from": socket.user, "text": text, "ts": now_ms()}, room=room)
        return {"ok": True}

    @hub.on("incr")
    async def incr_event(socket: Socket, data: Any) -> dict[str, Any]:
        # Applied to the stored session, atomically: no increment of another tab, socket
        # or process is lost.
        count = await socket.modify_session(count_one)
        await hub.emit("count", {"count": count}, room=session_room(socket.session), skip=socket)
        return {"count": count}

    @hub.on("confirm")
    async def confirm(socket: Socket, data: Any) -> dict[str, Any]:
        # A server request: the server asks this socket and waits for its ack.
        question = data.get("question") if type(data) is dict else None
        timeout = data.get("timeout", 10) if type(data) is dict else None
        if type(question) is not str or not 0 < len(question) <= MAX_TEXT:
            raise InvalidData(f'"question" must be a string of 1 to {MAX_TEXT} characters')
        if not (type(timeout) is int or type(timeout) is float) or not 0 < timeout <= MAX_CONFIRM_TIMEOUT:
            raise InvalidData(f'"timeout" must be a number of seconds, more than 0 and at most {MAX_CONFIRM_TIMEOUT}')
        try:
            answer = await socket.request("confirm", {"question": question}, timeout=timeout)
        except RequestFailed as exc:
            return {"declined": exc.code}
        return {"answer": answer}

    @hub.on("fail")
    async def fail(socket: Socket, data: Any) -> None:
        raise RuntimeError("the demo's fail event raises on purpose")


def count_one(session: dict[str, Any]) -> int:
    count: int = session.get("count", 0) + 1
    session["count"] = count
    return count


def room_of(data: Any) -> str:
    room = data.get("room") if type(data) is dict else None
    if type(room) is not str or ROOM_NAME.fullmatch(room) is None:
        raise InvalidData('"room" must be 1 to 32 characters of a-z 0-9 _ -')
    return room


def presence_rooms(room: str) -> bool:
    """The rooms whose presence the demo tracks (`Hub(presence=...)`): all of its own."""
    return ROOM_NAME.fullmatch(room) is not None


def public_rooms(socket: Socket) -> set[str]:
    return {room for room in socket.rooms if ROOM_NAME.fullmatch(room)}
