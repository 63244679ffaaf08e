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
"Layout". The names are imported when first used, so that `import server.protocol` (the
codec) loads neither aiohttp nor asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
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
    from .history import HistorySettings, Joined, Position, parse_since
    from .hub import Hub, reload_session, require_user, session_room, user_room
    from .metrics import expose_metrics
    from .origins import same_origin_middleware
    from .protocol import Event
    from .redis_sessions import RedisSessionBridge
    from .responses import json_then
    from .sessions import CookieSessionBridge, SessionBridge, new_key
    from .sockets import Socket
    from .transport import TransportSettings
    from .wiring import HUB, serve_client_js, setup

# Each public name, and the module it lives in.
_EXPORTS = {
    "CloseCode": "codes",
    "ErrorCode": "codes",
    "CloseConnection": "errors",
    "Forbidden": "errors",
    "InvalidData": "errors",
    "LimitReached": "errors",
    "LoggedOut": "errors",
    "RateLimited": "errors",
    "ReplyError": "errors",
    "RequestFailed": "errors",
    "RequestTimeout": "errors",
    "SessionExpired": "errors",
    "SessionReadOnly": "errors",
    "SessionReplaced": "errors",
    "SocketClosed": "errors",
    "Unauthorized": "errors",
    "Unavailable": "errors",
    "UnknownEvent": "errors",
    "HistorySettings": "history",
    "Joined": "history",
    "Position": "history",
    "parse_since": "history",
    "Hub": "hub",
    "Event": "protocol",
    "reload_session": "hub",
    "require_user": "hub",
    "session_room": "hub",
    "user_room": "hub",
    "expose_metrics": "metrics",
    "same_origin_middleware": "origins",
    "RedisSessionBridge": "redis_sessions",
    "json_then": "responses",
    "CookieSessionBridge": "sessions",
    "SessionBridge": "sessions",
    "new_key": "sessions",
    "Socket": "sockets",
    "TransportSettings": "transport",
    "HUB": "wiring",
    "serve_client_js": "wiring",
    "setup": "wiring",
}

__all__ = [
    "__version__",
    "CloseCode",
    "CloseConnection",
    "CookieSessionBridge",
    "ErrorCode",
    "Event",
    "Forbidden",
    "HUB",
    "HistorySettings",
    "Hub",
    "InvalidData",
    "Joined",
    "LimitReached",
    "LoggedOut",
    "Position",
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
    "expose_metrics",
    "json_then",
    "new_key",
    "parse_since",
    "reload_session",
    "require_user",
    "same_origin_middleware",
    "serve_client_js",
    "session_room",
    "setup",
    "user_room",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
