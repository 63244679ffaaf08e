"""CORS for the HTTP API, for front ends served from another allowed origin.

Credentials are allowed, so the allowed origin is echoed (never `*`) with `Vary: Origin`;
other origins get no CORS headers, and their preflight a 403.
"""

from __future__ import annotations

from typing import Awaitable, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler

from .http_errors import json_error

ALLOWED_METHODS = "GET, POST, OPTIONS"


def setup_cors(app: web.Application, allowed_origins: Iterable[str]) -> None:
    """Answer preflights (a middleware) and mark every response (`on_response_prepare`).

    The middleware hands every other request straight on, without a frame of its own that
    would stay alive as long as each websocket does.
    """
    allowed = frozenset(allowed_origins)

    @web.middleware
    def preflights(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return _preflight(request, allowed)
        return handler(request)

    async def mark(request: web.Request, response: web.StreamResponse) -> None:
        # Error responses carry the headers too, so the page can read a 401.
        # Not a preflight's (it has them), nor a websocket's 101 (CORS does not apply to it).
        if type(response) is not web.WebSocketResponse and "Access-Control-Allow-Origin" not in response.headers:
            origin = request.headers.get("Origin")
            _vary(response, origin if origin in allowed else None)

    app.middlewares.append(preflights)
    app.on_response_prepare.append(mark)


async def _preflight(request: web.Request, allowed: frozenset[str]) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    if origin not in allowed:
        raise json_error(web.HTTPForbidden, "forbidden_origin", "this origin may not call this API")
    preflight = web.Response(status=204)
    _allow(preflight, origin)
    preflight.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    preflight.headers["Access-Control-Allow-Headers"] = request.headers.get(
        "Access-Control-Request-Headers", "Content-Type")
    preflight.headers["Access-Control-Max-Age"] = "600"
    return preflight


def _allow(response: web.StreamResponse, origin: str) -> None:
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers.add("Vary", "Origin")


def _vary(response: web.StreamResponse, allowed_origin: str | None) -> None:
    # The answer depends on Origin whether or not it is allowed: caches must know.
    if allowed_origin is None:
        response.headers.add("Vary", "Origin")
    else:
        _allow(response, allowed_origin)
