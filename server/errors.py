"""Exceptions raised where a problem is found and turned into wire frames in one place.

    HubError
     ├── ReplyError            -> an error ack (or `error` event); the connection stays open
     │    ├── BadFrame              bad_frame
     │    ├── UnknownEvent          unknown_event
     │    ├── InvalidData           invalid_data
     │    ├── Forbidden             forbidden
     │    ├── SessionReadOnly       session_read_only
     │    ├── RateLimited           rate_limited
     │    ├── RequestTimeout        timeout
     │    ├── Unavailable           unavailable
     │    └── LimitReached          limit_reached
     ├── CloseConnection       -> the socket is closed with `code`
     │    ├── LoggedOut             4001
     │    ├── SessionExpired        4002
     │    ├── SessionReplaced       4003
     │    └── Unauthorized          4401
     └── RequestFailed         the client answered a server request with an error ack

Anything else raised by a handler reaches the client as `internal` with a generic message;
the traceback goes to the server log only.
"""

from __future__ import annotations

from .codes import CloseCode, ErrorCode


class HubError(Exception):
    """Base class of every error this package raises on purpose."""


class ReplyError(HubError):
    """A problem the client is told about; the connection stays open."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The id of the frame at fault, when it carried a valid one: the reply becomes an ack.
        self.id = id


class BadFrame(ReplyError):
    code = ErrorCode.BAD_FRAME


class UnknownEvent(ReplyError):
    code = ErrorCode.UNKNOWN_EVENT


class InvalidData(ReplyError):
    code = ErrorCode.INVALID_DATA


class Forbidden(ReplyError):
    code = ErrorCode.FORBIDDEN


class SessionReadOnly(ReplyError):
    code = ErrorCode.SESSION_READ_ONLY


class RateLimited(ReplyError):
    code = ErrorCode.RATE_LIMITED


class RequestTimeout(ReplyError):
    code = ErrorCode.TIMEOUT


class Unavailable(ReplyError):
    code = ErrorCode.UNAVAILABLE


class LimitReached(ReplyError):
    code = ErrorCode.LIMIT_REACHED


class CloseConnection(HubError):
    """The socket must be closed with `code`; `reason` is sent in the close frame."""

    code: CloseCode = CloseCode.NORMAL
    reason: str = "closed"

    def __init__(self, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        super().__init__(self.reason)


class LoggedOut(CloseConnection):
    code = CloseCode.LOGGED_OUT
    reason = "logged out"


class SessionExpired(CloseConnection):
    code = CloseCode.SESSION_EXPIRED
    reason = "session expired"


class SessionReplaced(CloseConnection):
    code = CloseCode.SESSION_REPLACED
    reason = "session replaced by a newer login"


class Unauthorized(CloseConnection):
    code = CloseCode.UNAUTHORIZED
    reason = "login required"


class RequestFailed(HubError):
    """The client answered a server request with an error ack."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"client answered {code}: {message}")
        self.code = code
        self.message = message


class SocketClosed(HubError):
    """The socket closed before a send or a server request could complete."""
