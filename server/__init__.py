"""Websockets that share the session of the aiohttp HTTP routes.

    from aiohttp import web
    import server

    app = web.Application()
    hub = server.setup(app, server.CookieSessionBridge(server.new_key()))

    @hub.on("chat")
    async def chat(socket, data):
        await hub.emit("chat", data, room="lobby")
        return {"ok": True}

Everything an app needs is exported here; the modules behind it are named in the README's
"Layout". The codec (`server/protocol.py`) uses neither aiohttp nor asyncio.
"""

__version__ = "0.2.0"

from .codes import CloseCode, ErrorCode
from .errors import (
    CloseConnection,
    Forbidden,
    InvalidData,
    LimitReached,
    LoggedOut,
    RateLimited,
    ReplyError,
    RequestFailed,
    RequestTimeout,
    SessionExpired,
    SessionReadOnly,
    SessionReplaced,
    SocketClosed,
    Unauthorized,
    Unavailable,
    UnknownEvent,
)
from .hub import Hub, reload_session, require_user, session_room, user_room
from .origins import same_origin_middleware
from .redis_sessions import RedisSessionBridge
from .responses import json_then
from .sessions import CookieSessionBridge, SessionBridge, new_key
from .sockets import Socket
from .transport import TransportSettings
from .wiring import HUB, serve_client_js, setup

__all__ = [
    "HUB",
    "CloseCode",
    "CloseConnection",
    "CookieSessionBridge",
    "ErrorCode",
    "Forbidden",
    "Hub",
    "InvalidData",
    "LimitReached",
    "LoggedOut",
    "RateLimited",
    "RedisSessionBridge",
    "ReplyError",
    "RequestFailed",
    "RequestTimeout",
    "SessionBridge",
    "SessionExpired",
    "SessionReadOnly",
    "SessionReplaced",
    "Socket",
    "SocketClosed",
    "TransportSettings",
    "Unauthorized",
    "Unavailable",
    "UnknownEvent",
    "__version__",
    "json_then",
    "new_key",
    "reload_session",
    "require_user",
    "same_origin_middleware",
    "serve_client_js",
    "session_room",
    "setup",
    "user_room",
]
