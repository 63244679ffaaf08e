"""Wire codes shared by the codec, the errors and the transport (protocol.md, "Codes")."""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """Why the server closed a websocket (protocol.md, "Close codes")."""

    NORMAL = 1000
    GOING_AWAY = 1001
    INVALID_PAYLOAD = 1007  # a text frame that is not UTF-8 (closed by aiohttp)
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011  # an app's on_accepted hook failed
    LOGGED_OUT = 4001
    SESSION_EXPIRED = 4002
    SESSION_REPLACED = 4003
    UNAUTHORIZED = 4401
    TOO_SLOW = 4408
    TOO_MANY_SOCKETS = 4429


class ErrorCode(str, enum.Enum):
    """The `code` of an `error` event or an error ack (protocol.md, "Error codes")."""

    BAD_FRAME = "bad_frame"
    UNKNOWN_EVENT = "unknown_event"
    INVALID_DATA = "invalid_data"
    FORBIDDEN = "forbidden"
    SESSION_READ_ONLY = "session_read_only"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    LIMIT_REACHED = "limit_reached"
