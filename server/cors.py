"""CORS for the HTTP API, for front ends served from another allowed origin.

Credentials are allowed, so the allowed origin is echoed (never `*`) with `Vary: Origin`;
other origins get no CORS headers, and their preflight a 403.
"""

from __future__ import annotations

from typing import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .http_errors import json_error

ALLOWED_METHODS = "GET, POST, OPTIONS"


def cors_middleware(allowed_origins: Iterable[str]) -> Middleware:
    allowed = frozenset(allowed_origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if origin not in allowed:
                raise json_error(web.HTTPForbidden, "forbidden_origin", "this origin may not call this API")
            preflight = web.Response(status=204)
            _allow(preflight, origin)
            preflight.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            preflight.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "Content-Type")
            preflight.headers["Access-Control-Max-Age"] = "600"
            return preflight
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # Error responses carry the headers too, so the page can read a 401.
            _vary(exc, origin if origin in allowed else None)
            raise
        if not response.prepared:  # a websocket has sent its headers already
            _vary(response, origin if origin in allowed else None)
        return response

    return cors


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
