"""Reference: a plain aiohttp websocket server, the practical limit for an aiohttp server.

It speaks just enough of protocol v1 for the bench, with the stdlib's json:

* on connect it sends one small frame, `{"event": "connected", "data": {...}}`;
* `{"event": "echo", "data": d, "id": n}` -> `{"ack": n, "data": d}` (json.loads, json.dumps);
* `{"event": "join", "data": {"room": r}, "id": n}` -> joins r, acks `{"room", "members"}`;
* `{"event": "chat", "data": {"room": r, "text": t}, "id": n}` -> serializes one `chat`
  frame and loops over the room's sockets with `send_str`, then acks `{"ok": true}`.

With `--mode str` it does no JSON at all: every text frame is sent back as it is.

With `--session` it is aiohttp + aiohttp-session and nothing more: `POST /api/login` puts
the user in an encrypted cookie session (key: SESSION_KEY, cookie `session`, as run.py),
and the upgrade reads that session and names its user in `connected` (no user: close 4401).

    python bench/raw_server.py --port 8090 [--mode json|str] [--session] [--heartbeat 25] [--backlog 4096]

It listens with the backlog run.py uses (4096; aiohttp's default is 128), so that the
upgrade storm of scenario (g) compares servers, not listen queues.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import time

from aiohttp import WSMsgType, web
from aiohttp_session import get_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

SOCKETS = web.AppKey("sockets", set)
ROOMS = web.AppKey("rooms", dict)
USER = {"id": 1, "name": "alice"}  # the same public user object as the demo's


def make_app(mode: str, heartbeat: float | None, max_message_size: int = 1 << 20,
             session: bool = False) -> web.Application:
    app = web.Application()
    app[SOCKETS] = set()
    app[ROOMS] = {}
    if session:
        storage = EncryptedCookieStorage(Fernet(os.environ["SESSION_KEY"]), cookie_name="session", max_age=86400,
                                         httponly=True, samesite="Lax")
        app.middlewares.append(session_middleware(storage))

        async def login(request: web.Request) -> web.Response:
            (await get_session(request))["user"] = USER
            return web.json_response({"user": USER})

        app.router.add_post("/api/login", login)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        # The same transport settings as our server's.
        ws = web.WebSocketResponse(heartbeat=heartbeat, max_msg_size=max_message_size + 1, compress=False)
        user = (await get_session(request)).get("user") if session else USER
        await ws.prepare(request)
        if user is None:
            await ws.close(code=4401, message=b"login required")
            return ws
        await ws.send_str(json.dumps({"event": "connected",
                                      "data": {"socket": secrets.token_urlsafe(12), "user": user}}))
        if mode == "str":
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await ws.send_str(msg.data)
            return ws

        rooms: dict[str, set[web.WebSocketResponse]] = app[ROOMS]
        joined: set[str] = set()
        app[SOCKETS].add(ws)
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                event = frame.get("event")
                data = frame.get("data")
                if event == "echo":
                    result = data
                elif event == "join":
                    room = data["room"]
                    rooms.setdefault(room, set()).add(ws)
                    joined.add(room)
                    result = {"room": room, "members": len(rooms[room])}
                elif event == "chat":
                    room = data["room"]
                    out = json.dumps({"event": "chat", "data": {
                        "room": room, "from": USER, "text": data["text"], "ts": int(time.time() * 1000)}})
                    for peer in list(rooms.get(room, ())):  # serialized once, sent to each
                        await peer.send_str(out)
                    result = {"ok": True}
                else:
                    result = None
                if "id" in frame:
                    await ws.send_str(json.dumps({"ack": frame["id"], "data": result}))
        finally:
            app[SOCKETS].discard(ws)
            for room in joined:
                members = rooms.get(room)
                if members is not None:
                    members.discard(ws)
                    if not members:
                        del rooms[room]
        return ws

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", websocket)
    return app


def warm_allocator() -> None:
    """Free one 16 MiB block, so glibc's malloc raises its mmap threshold (dynamically, to
    the size of a freed mmapped block), as our server does when it starts
    (server/transport.py, `_raise_mmap_threshold`). Without it, every 256 KiB receive buffer
    of asyncio's transports costs mmap + mremap + munmap (about 10 us per frame here):
    an accident of the allocator, not a cost of the server's design."""
    block = bytearray(16 << 20)
    del block


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--mode", choices=["json", "str"], default="json",
                   help="json: decode and re-encode an ack envelope; str: echo the raw string")
    p.add_argument("--session", action="store_true", help="aiohttp-session cookie sessions (see above)")
    p.add_argument("--heartbeat", type=float, default=25.0, help="seconds between pings (0: off); ours uses 25")
    p.add_argument("--cold-allocator", action="store_true", help="skip warm_allocator() (see its docstring)")
    p.add_argument("--backlog", type=int, default=4096, help="the listen backlog (run.py: 4096)")
    args = p.parse_args()
    if not args.cold_allocator:
        warm_allocator()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    web.run_app(make_app(args.mode, args.heartbeat or None, session=args.session), host="127.0.0.1", port=args.port,
                backlog=args.backlog,
                print=lambda _: print(f"raw server ({args.mode}) on 127.0.0.1:{args.port}", flush=True))


if __name__ == "__main__":
    main()
