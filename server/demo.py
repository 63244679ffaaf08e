"""The demo app: login/logout, a session counter, notifications, rooms and chat.

Written only against the public API (`Hub`, `Socket`, `SessionBridge`), as an app of
yours would be.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping

from aiohttp import web

from .codes import CloseCode
from .errors import Forbidden, InvalidData, RequestFailed
from .http_errors import json_error
from .responses import json_then
from .hub import Hub, session_room, user_room
from .sockets import Socket

ROOM_NAME = re.compile(r"[a-z0-9_-]{1,32}")
MAX_CONFIRM_TIMEOUT = 60
MAX_TEXT = 2000
INDEX = Path(__file__).resolve().parent.parent / "static" / "index.html"


class Users:
    """Demo accounts with scrypt-hashed passwords; `check` returns the public user object."""

    def __init__(self, passwords: Mapping[str, str]) -> None:
        self._accounts: dict[str, tuple[int, bytes, bytes]] = {}
        for number, (name, password) in enumerate(passwords.items(), start=1):
            salt = os.urandom(16)
            self._accounts[name] = (number, salt, _hash(password, salt))
        # Unknown names are checked against this, so they cost as much as a wrong password.
        self._decoy = (0, os.urandom(16), b"")

    def check(self, name: str, password: str) -> dict[str, Any] | None:
        number, salt, digest = self._accounts.get(name, self._decoy)
        if hmac.compare_digest(_hash(password, salt), digest) and number:
            return {"id": number, "name": name}
        return None


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)


def now_ms() -> int:
    return int(time.time() * 1000)


def setup_demo(app: web.Application, hub: Hub, passwords: Mapping[str, str]) -> None:
    users = Users(passwords)
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
        if type(name) is not str or type(password) is not str:
            raise json_error(web.HTTPBadRequest, "bad_request", '"username" and "password" must be strings')
        user = users.check(name, password)
        if user is None:
            raise json_error(web.HTTPUnauthorized, "bad_credentials", "wrong username or password")
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

    @hub.on("whoami")
    async def whoami(socket: Socket, data: Any) -> dict[str, Any]:
        return {"user": socket.user, "rooms": sorted(public_rooms(socket))}

    @hub.on("echo")
    async def echo(socket: Socket, data: Any) -> Any:
        return data

    @hub.on("join")
    async def join(socket: Socket, data: Any) -> dict[str, Any]:
        room = room_of(data)
        await socket.join(room)
        return {"room": room, "members": await hub.count(room)}

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
        if type(timeout) not in (int, float) or not 0 < timeout <= MAX_CONFIRM_TIMEOUT:
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
    count = session["count"] = session.get("count", 0) + 1
    return count


def room_of(data: Any) -> str:
    room = data.get("room") if type(data) is dict else None
    if type(room) is not str or ROOM_NAME.fullmatch(room) is None:
        raise InvalidData('"room" must be 1 to 32 characters of a-z 0-9 _ -')
    return room


def public_rooms(socket: Socket) -> set[str]:
    return {room for room in socket.rooms if ROOM_NAME.fullmatch(room)}
