"""HTTP errors as JSON `{"error": {"code", "message"}}`, for the API and the upgrade."""

from __future__ import annotations

import json
import logging
from typing import Awaitable

from aiohttp import web
from aiohttp.typedefs import Handler

from .errors import Unavailable

log = logging.getLogger(__name__)


def json_error(status: type[web.HTTPException], code: str, message: str,
               headers: dict[str, str] | None = None) -> web.HTTPException:
    """An HTTP exception whose body is the JSON error object; raise it from a route."""
    body = json.dumps({"error": {"code": code, "message": message}})
    return status(text=body, content_type="application/json", headers=headers)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


def is_websocket_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


@web.middleware
def json_errors(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """Answer every HTTP error with the JSON error object; a crash is a bare 500.

    A websocket upgrade is handed straight on: the endpoint answers its refusals in JSON
    itself, and this middleware's frame would stay alive as long as the socket does.
    """
    if is_websocket_upgrade(request):
        return handler(request)
    return _json_errors(request, handler)


async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        response = _error_response(exc.status, _CODES.get(exc.status, "error"), exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Unavailable as exc:
        return _error_response(503, "unavailable", exc.message)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error_response(500, "internal", "the server failed to handle this request")


def _error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
