"""Security headers on every HTTP response, and a `Server` header that names no versions."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

# The demo page loads only its own scripts, styles and socket: nothing inline, no frames.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Server": "session-sockets",  # aiohttp's default names Python's and its own version
}


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(HEADERS)
        raise
    if not response.prepared:  # a websocket has sent its headers already
        response.headers.update(HEADERS)
    return response
