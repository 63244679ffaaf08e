"""One call that gives an existing aiohttp application session-sharing websockets.

    app = web.Application()
    hub = setup(app, CookieSessionBridge(key))     # or RedisSessionBridge.from_url(url)

In the spirit of aiohttp-session's `setup(app, storage)`: the session middleware, the
socket route, and the hub's start-up and shutdown, nothing of any app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from .backplane import Backplane, LocalBackplane
from .history import HistorySettings
from .hub import Hub, reload_session
from .redis_backplane import RedisBackplane
from .redis_sessions import RedisSessionBridge
from .sessions import SessionBridge
from .transport import TransportSettings, WebSocketEndpoint

HUB = web.AppKey("session_sockets_hub", Hub)
CLIENT_JS = Path(__file__).resolve().parent / "static" / "client.js"


def setup(app: web.Application, sessions: SessionBridge, *, path: str = "/ws",
          transport: TransportSettings | None = None, backplane: Backplane | None = None,
          history: HistorySettings = HistorySettings(), reload_sessions: bool = True, **hub_options: Any) -> Hub:
    """Wire sockets into `app`; returns the hub to register handlers on.

    Adds:
        * the session middleware, after the middlewares `app` already has (so it runs
          innermost, next to the handlers, as aiohttp-session's `setup` does);
        * `GET path`: the websocket endpoint, with `transport`'s limits;
        * start-up (connects the storage, starts delivering emits), shutdown (every
          socket gets 1001 at once) and cleanup (closes the storage).

    Args:
        sessions: a `CookieSessionBridge` or `RedisSessionBridge`. The HTTP routes get
            their session from it too (`await sessions.get(request)`).
        backplane: how emits reach sockets in other processes. With Redis sessions the
            default is Redis pub/sub on the sessions' own connection; otherwise this
            process only.
        history: how much of each room's events the default backplane keeps, so a socket
            that dropped off can catch up (protocol.md, "Recovery"); `HistorySettings(0)`
            turns it off. A backplane you pass has its own.
        reload_sessions: reload the session before every event (`reload_session`), so a
            logout or an expiry closes a busy socket at its next event.
        hub_options: passed to `Hub` (`connect=`, `session_check_interval=`,
            `max_rooms_per_socket=`, `presence=`: the rooms that track who is in them).
    """
    if backplane is None and isinstance(sessions, RedisSessionBridge):
        backplane = RedisBackplane(sessions.link, prefix=f"{sessions.storage.cookie_name}:ws:", history=history)
    elif backplane is None:
        backplane = LocalBackplane(history=history)
    hub = Hub(sessions, backplane=backplane, **hub_options)
    if reload_sessions:
        hub.use(reload_session)
    app.middlewares.append(sessions.middleware())
    app.router.add_get(path, WebSocketEndpoint(hub, transport).upgrade)
    app[HUB] = hub

    async def start(app: web.Application) -> None:
        await hub.start()

    async def close_sockets(app: web.Application) -> None:
        await hub.stop()  # every socket gets 1001 now, not an abrupt cut at the timeout

    async def close_storage(app: web.Application) -> None:
        await sessions.close()

    app.on_startup.append(start)
    app.on_shutdown.append(close_sockets)
    app.on_cleanup.append(close_storage)
    return hub


def serve_client_js(app: web.Application, path: str = "/client.js") -> None:
    """Serve the package's JavaScript client (an ES module) at `path`, and its TypeScript
    declarations beside it (`/client.js` -> `/client.d.ts`)."""
    if not path.endswith(".js"):
        raise ValueError(f"the client's path must end with .js, not {path!r}")

    def serve(file: Path, content_type: str) -> Any:
        async def handler(request: web.Request) -> web.FileResponse:
            return web.FileResponse(file, headers={"Content-Type": content_type})
        return handler

    app.router.add_get(path, serve(CLIENT_JS, "text/javascript; charset=utf-8"))
    app.router.add_get(path[:-3] + ".d.ts", serve(CLIENT_JS.with_suffix(".d.ts"), "application/typescript; charset=utf-8"))
