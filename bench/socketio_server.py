"""Reference: python-socketio's AsyncServer on aiohttp, doing the same work as ours.

* connect: a cookie-less auth payload, `40{"token": "..."}`; a wrong or missing token is
  refused; the user object is kept in the Socket.IO session (`save_session`);
* `echo`: the ack is the data (`421["echo",d]` -> `431[d]`);
* `join`: enters the room, acks `{"room", "members"}`;
* `chat`: `sio.emit("chat", {...}, room=...)` to every member, acks `{"ok": true}`.

    python bench/socketio_server.py --port 8091
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import socketio
from aiohttp import web

from raw_server import warm_allocator  # run as a script: bench/ is on sys.path

TOKEN = "bench-token"
USER = {"id": 1, "name": "alice"}


def make_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/healthz", healthz)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> bool:
        if type(auth) is not dict or auth.get("token") != TOKEN:
            return False
        await sio.save_session(sid, {"user": USER})
        return True

    @sio.on("echo")
    async def echo(sid: str, data: Any) -> Any:
        return data

    @sio.on("join")
    async def join(sid: str, data: Any) -> dict[str, Any]:
        room = data["room"]
        await sio.enter_room(sid, room)
        members = sum(1 for _ in sio.manager.get_participants("/", room))
        return {"room": room, "members": members}

    @sio.on("chat")
    async def chat(sid: str, data: Any) -> dict[str, Any]:
        room = data["room"]
        session = await sio.get_session(sid)
        await sio.emit("chat", {"room": room, "from": session["user"], "text": data["text"],
                                "ts": int(time.time() * 1000)}, room=room)
        return {"ok": True}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8091)
    p.add_argument("--cold-allocator", action="store_true", help="skip warm_allocator() (see its docstring)")
    args = p.parse_args()
    if not args.cold_allocator:
        warm_allocator()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    web.run_app(make_app(), host="127.0.0.1", port=args.port,
                print=lambda _: print(f"python-socketio server on 127.0.0.1:{args.port}", flush=True))


if __name__ == "__main__":
    main()
