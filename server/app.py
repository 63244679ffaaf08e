"""Assemble the demo server: `setup()` from the library, plus the demo's routes and page."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from .backplane import Backplane, LocalBackplane
from .config import Settings, load_fernet
from .cors import setup_cors
from .demo import presence_rooms, setup_demo
from .headers import security_headers
from .history import HistorySettings
from .http_errors import json_errors
from .hub import Hub
from .metrics import expose_metrics
from .origins import same_origin_middleware
from .redis_backplane import RedisBackplane
from .redis_sessions import RedisSessionBridge
from .sessions import CookieSessionBridge, SessionBridge
from .transport import TransportSettings
from .wiring import HUB, setup

log = logging.getLogger(__name__)

__all__ = ["HUB", "SETTINGS", "make_app", "make_sessions"]

SETTINGS = web.AppKey("settings", Settings)
STATIC_DIR = Path(__file__).resolve().parent / "static"


def make_sessions(settings: Settings) -> SessionBridge:
    """The session storage the settings ask for, with the brief's cookie attributes."""
    cookie = dict(cookie_name=settings.cookie_name, secure=settings.secure_cookies or None)
    if settings.redis_url:
        return RedisSessionBridge.from_url(settings.redis_url, settings.session_max_age,
                                           timeout=settings.redis_timeout, **cookie)
    return CookieSessionBridge(load_fernet(settings), settings.session_max_age, **cookie)


def make_app(settings: Settings | None = None) -> web.Application:
    """The demo server as an `aiohttp.web.Application`, ready for `web.run_app`."""
    settings = settings or Settings()
    sessions = make_sessions(settings)
    app = web.Application()
    app.on_response_prepare.append(security_headers)
    setup_cors(app, settings.allowed_origins)
    app.middlewares.extend([json_errors, same_origin_middleware(settings.allowed_origins)])
    history = HistorySettings(settings.history_size, settings.history_ttl)
    backplane: Backplane = LocalBackplane(history=history)
    if isinstance(sessions, RedisSessionBridge):  # Redis is both the session store and the backplane
        backplane = RedisBackplane(sessions.link, prefix=settings.cookie_name + ":ws:", ttl=settings.instance_ttl,
                                   history=history)
    hub: Hub = setup(app, sessions, backplane=backplane, transport=TransportSettings(
        max_message_size=settings.max_message_size,
        heartbeat=settings.heartbeat or None,
        allowed_origins=frozenset(settings.allowed_origins),
        send_limit=settings.send_limit,
        rate_limit=settings.rate_limit,
        rate_limit_bytes=settings.rate_limit_bytes,
        max_sockets_per_user=settings.max_sockets_per_user,
    ), session_check_interval=settings.session_check_interval, max_rooms_per_socket=settings.max_rooms_per_socket,
       presence=presence_rooms if settings.presence else None)
    app[SETTINGS] = settings
    if settings.metrics:
        expose_metrics(app, hub, port=settings.metrics_port, host=settings.host)
    setup_demo(app, hub, settings.users)
    app.router.add_static("/static/", STATIC_DIR)

    async def started(app: web.Application) -> None:
        log.info("sessions in %s", "Redis" if settings.redis_url else "encrypted cookies")
        if settings.metrics:
            log.info("Prometheus metrics at http://%s:%s/metrics", settings.host, settings.metrics_port or settings.port)

    app.on_startup.append(started)
    return app
