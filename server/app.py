"""Assemble the aiohttp application: sessions, the hub, `/ws`, the demo routes."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from .config import Settings, load_fernet
from .cors import cors_middleware
from .demo import setup_demo
from .headers import security_headers
from .http_errors import json_errors
from .origins import same_origin_middleware
from .hub import Hub, reload_session
from .redis_backplane import RedisBackplane
from .redis_link import RedisLink
from .redis_sessions import RedisSessionBridge
from .sessions import CookieSessionBridge, SessionBridge
from .transport import TransportSettings, WebSocketEndpoint

log = logging.getLogger(__name__)

HUB = web.AppKey("hub", Hub)
SETTINGS = web.AppKey("settings", Settings)
STATIC_DIR = Path(__file__).resolve().parent / "static"


def make_sessions(settings: Settings) -> SessionBridge:
    """The session storage the settings ask for, with the brief's cookie attributes."""
    cookie = dict(
        cookie_name=settings.cookie_name,
        httponly=True,
        samesite="Lax",
        path="/",
        secure=settings.secure_cookies or None,
    )
    if settings.redis_url:
        link = RedisLink.from_url(settings.redis_url, timeout=settings.redis_timeout, tracking=True)
        return RedisSessionBridge(link, settings.session_max_age, **cookie)
    return CookieSessionBridge(load_fernet(settings), settings.session_max_age, **cookie)


def make_app(settings: Settings | None = None) -> web.Application:
    """The demo server as an `aiohttp.web.Application`, ready for `web.run_app`."""
    settings = settings or Settings()
    sessions = make_sessions(settings)
    backplane = None
    if isinstance(sessions, RedisSessionBridge):  # Redis is both the session store and the backplane
        backplane = RedisBackplane(sessions.link, prefix=settings.cookie_name + ":ws:", ttl=settings.instance_ttl)
    hub = Hub(sessions, backplane=backplane, session_check_interval=settings.session_check_interval,
              max_rooms_per_socket=settings.max_rooms_per_socket)
    hub.use(reload_session)

    app = web.Application(middlewares=[
        security_headers,
        cors_middleware(settings.allowed_origins),
        json_errors,
        same_origin_middleware(settings.allowed_origins),
        sessions.middleware(),
    ])
    app[HUB] = hub
    app[SETTINGS] = settings
    app.router.add_get("/ws", WebSocketEndpoint(hub, TransportSettings(
        max_message_size=settings.max_message_size,
        heartbeat=settings.heartbeat or None,
        allowed_origins=frozenset(settings.allowed_origins),
        send_limit=settings.send_limit,
        rate_limit=settings.rate_limit,
        rate_limit_bytes=settings.rate_limit_bytes,
        max_sockets_per_user=settings.max_sockets_per_user,
    )).upgrade)
    setup_demo(app, hub, settings.users)
    app.router.add_static("/static/", STATIC_DIR)

    async def start(app: web.Application) -> None:
        await hub.start()
        log.info("sessions in %s", "Redis" if settings.redis_url else "encrypted cookies")

    async def close_sockets(app: web.Application) -> None:
        await hub.stop()  # every socket gets 1001 now, not an abrupt cut at the timeout

    async def close_storage(app: web.Application) -> None:
        await sessions.close()

    app.on_startup.append(start)
    app.on_shutdown.append(close_sockets)
    app.on_cleanup.append(close_storage)
    return app
