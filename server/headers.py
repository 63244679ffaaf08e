"""Security headers on every HTTP response, and a `Server` header that names no versions."""

from __future__ import annotations

from aiohttp import web

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


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`app.on_response_prepare` handler: every response, errors included.

    A signal, not a middleware: a middleware's frame would stay alive as long as each
    websocket does. The upgrade's own 101 carries none: they concern documents, and a
    websocket keeps its response headers for its whole life.
    """
    if type(response) is not web.WebSocketResponse:
        response.headers.update(HEADERS)
