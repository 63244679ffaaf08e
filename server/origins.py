"""The Origin rule, for socket upgrades and for HTTP requests that change state (CSRF).

Browsers attach the session cookie to requests that other pages make (a form posted to
`/api/logout`, a `fetch` with `mode: "no-cors"`), so the cookie alone does not show that
the user's own page asked. What does: the request's `Origin` (or, without one, its
`Sec-Fetch-Site` or `Referer`) is the server's own origin or an allowed one. A request
that carries none of them is not a browser's (curl, another server) and is let through,
as upgrades are. Bodies must be `application/json`, which no form can send and which a
cross-origin page can send only after a CORS preflight that other origins fail.
"""

from __future__ import annotations

from typing import Awaitable, Iterable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .http_errors import json_error

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def origin_allowed(request: web.Request, allowed: frozenset[str]) -> bool:
    """The brief's Origin rule: none (not a browser), the page's own, or an allowed one."""
    origin = request.headers.get("Origin")
    return origin is None or origin == own_origin(request) or origin in allowed


def same_origin_middleware(allowed_origins: Iterable[str] = ()) -> Middleware:
    """Refuse state-changing requests from other origins (403) and non-JSON bodies (415).

    `allowed_origins`: origins ("https://app.example") trusted besides the request's own.
    """
    allowed = frozenset(allowed_origins)

    # Not a coroutine: it checks, then hands the request on without a frame of its own
    # (which would stay alive as long as each websocket does).
    @web.middleware
    def same_origin(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if request.method not in SAFE_METHODS:
            if not _from_allowed_page(request, allowed):
                raise json_error(web.HTTPForbidden, "forbidden_origin",
                                 "this request comes from a page of another origin")
            if _has_body(request) and request.content_type != "application/json":
                raise json_error(web.HTTPUnsupportedMediaType, "unsupported_media_type",
                                 "send the body as application/json")
        return handler(request)

    return same_origin


def _from_allowed_page(request: web.Request, allowed: frozenset[str]) -> bool:
    headers = request.headers
    origin = headers.get("Origin")
    if origin is not None:
        return origin == own_origin(request) or origin in allowed
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")  # "none": the user typed or bookmarked it
    referer = headers.get("Referer")
    if referer:
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
        return origin == own_origin(request) or origin in allowed
    return True  # not a browser


def _has_body(request: web.Request) -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
