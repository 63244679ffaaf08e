"""The library as an app of yours uses it: `server.setup`, the hooks, the test client, and
the package as `pip install .` installs it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import server
from server.testing import Closed, TestSocket, connect
from tests.helpers import ROOT, Browser


def small_app(**setup_options: Any) -> tuple[web.Application, server.Hub, dict[str, Any]]:
    """An app that is not the demo: a login route, a few events, every hook."""
    app = web.Application()
    sessions = server.CookieSessionBridge(server.new_key())
    hub = server.setup(app, sessions, **setup_options)
    server.serve_client_js(app, "/js/client.js")
    seen: dict[str, Any] = {"accepted": [], "closed": [], "middleware": [], "gone": asyncio.Event()}

    async def login(request: web.Request) -> web.Response:
        session, old = await sessions.rotate(request)
        session["user"] = {"id": request.query["id"], "name": request.query["name"]}
        return web.json_response({"ok": True})

    app.router.add_post("/login", login)

    async def tag(sock: server.Socket, ev: Any, nxt: Any) -> Any:  # names of its own choosing
        seen["middleware"].append(ev.event)
        return await nxt(sock, ev)

    hub.use(tag)

    @hub.on_accepted
    async def welcome(socket: server.Socket) -> None:
        await socket.join("lobby")
        await socket.emit("welcome", {"rooms": sorted(r for r in socket.rooms if ":" not in r)})
        seen["accepted"].append(socket.user["name"])

    @hub.on_closed
    async def gone(socket: server.Socket) -> None:
        seen["closed"].append((socket.user["name"], socket.close_code, "lobby" in socket.rooms))
        seen["gone"].set()

    @hub.authorize_join
    async def admins_only(socket: server.Socket, room: str) -> bool:
        return room != "admins" or socket.user["name"] == "root"

    @hub.on("join")
    async def join(socket: server.Socket, data: Any) -> dict[str, Any]:
        await socket.join(data["room"])
        return {"members": await hub.count(data["room"])}

    @hub.on("ask")
    async def ask(socket: server.Socket, data: Any) -> Any:
        try:
            return await socket.request("question", data, timeout=2)
        except server.RequestFailed as exc:
            return {"declined": [exc.code, exc.message]}

    @hub.on("bad")
    async def bad(socket: server.Socket, data: Any) -> None:
        raise server.InvalidData("no good")

    return app, hub, seen


async def logged_in(app: web.Application, name: str) -> TestClient:
    http = TestClient(TestServer(app))
    await http.start_server()
    response = await http.post("/login", params={"id": name, "name": name})
    assert response.status == 200
    return http


async def test_setup_wires_sessions_sockets_and_hooks() -> None:
    app, hub, seen = small_app()
    http = await logged_in(app, "ann")
    try:
        async with await connect(http) as socket:
            assert socket.user == {"id": "ann", "name": "ann"}
            assert (await socket.receive("welcome")).data == {"rooms": ["lobby"]}  # joined by on_accepted
            assert await hub.count("lobby") == 1
            assert await socket.request("join", {"room": "lobby"}) == {"members": 1}
            with pytest.raises(server.RequestFailed) as refused:
                await socket.request("join", {"room": "admins"})
            assert (refused.value.code, refused.value.message) == ("forbidden", "you may not join 'admins'")
            with pytest.raises(server.RequestFailed) as failed:
                await socket.request("bad")
            assert failed.value.code == "invalid_data"
        assert socket.close_code == 1000
        await seen["gone"].wait()
        assert await hub.count("lobby") == 0
    finally:
        await http.close()
    assert seen["accepted"] == ["ann"]
    assert seen["closed"] == [("ann", 1000, True)]  # rooms are still known to the hook
    assert seen["middleware"] == ["join", "join", "bad"]


async def test_the_test_client_answers_server_requests_and_sees_refusals() -> None:
    app, hub, seen = small_app()
    http = await logged_in(app, "root")
    try:
        async with await connect(http) as socket:
            async def answer(data: Any) -> Any:
                return {"yes": data}

            socket.answer("question", answer)
            assert await socket.request("ask", 7) == {"yes": 7}
            assert await socket.request("join", {"room": "admins"}) == {"members": 1}

            async def decline(data: Any) -> Any:
                raise server.Forbidden("not telling")

            socket.answer("question", decline)
            assert await socket.request("ask", 1) == {"declined": ["forbidden", "not telling"]}
            await socket.emit("nothing-handles-this")
            assert (await socket.receive("error")).data["code"] == "unknown_event"
        http.session.cookie_jar.clear()
        with pytest.raises(Closed) as refused:
            await connect(http)
        assert (refused.value.code, refused.value.reason) == (4401, "login required")
    finally:
        await http.close()


async def test_the_test_client_sees_the_close_code_of_a_logout() -> None:
    app, hub, _ = small_app()
    http = await logged_in(app, "ann")
    try:
        socket = await connect(http)
        await hub.disconnect_session(socket_session(hub, socket), server.CloseCode.LOGGED_OUT)
        assert await socket.wait_closed() == 4001
        assert socket.close_reason == "logged out"
        with pytest.raises(Closed):
            await socket.request("join", {"room": "lobby"})
    finally:
        await http.close()


def socket_session(hub: server.Hub, socket: TestSocket) -> Any:
    return hub.sockets[socket.id].session


async def test_a_failing_on_accepted_hook_closes_with_1011() -> None:
    app, hub, _ = small_app()

    @hub.on_accepted
    async def broken(socket: server.Socket) -> None:
        raise RuntimeError("oops")

    http = await logged_in(app, "ann")
    try:
        socket = await connect(http)
        assert await socket.wait_closed() == 1011
        assert socket.close_reason == "internal error"  # never the exception's text
    finally:
        await http.close()


async def test_serve_client_js_serves_the_packaged_client() -> None:
    app, _, _ = small_app()
    async with TestClient(TestServer(app)) as http:
        response = await http.get("/js/client.js")
        assert response.status == 200
        assert response.content_type == "text/javascript"
        assert "export class Client" in await response.text()
        types = await http.get("/js/client.d.ts")
        assert types.status == 200 and "export declare class Client" in await types.text()


async def test_the_demo_authorizes_its_staff_room(base_url: str) -> None:
    async with Browser(base_url) as alice, Browser(base_url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        async with await alice.socket() as socket:
            assert (await socket.request("join", {"room": "staff"}))["members"] == 1
        async with await bob.socket() as socket:
            with pytest.raises(server.RequestFailed) as refused:
                await socket.request("join", {"room": "staff"})
            assert (refused.value.code, refused.value.message) == ("forbidden", "only staff may join 'staff'")
            assert (await socket.request("join", {"room": "lobby"}))["members"] == 1


def test_the_public_api_is_exported() -> None:
    assert server.__version__
    assert all(hasattr(server, name) for name in server.__all__)
    assert sorted(server.__all__) == sorted(["__version__", *server._EXPORTS])  # the lazy table and the list agree
    for name in ("setup", "Hub", "Socket", "CookieSessionBridge", "RedisSessionBridge", "serve_client_js"):
        assert name in server.__all__


# -- installed, not editable -------------------------------------------------------------

INSTALLED_CHECK = textwrap.dedent("""
    import asyncio, json, os, pathlib
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    import server
    from server.app import make_app

    async def main():
        out = {"file": server.__file__, "typed": (pathlib.Path(server.__file__).parent / "py.typed").exists()}
        async with TestClient(TestServer(make_app())) as http:
            for path in ("/", "/static/client.js", "/static/app.js"):
                out[path] = (await http.get(path)).status
        app = web.Application()
        server.setup(app, server.CookieSessionBridge(server.new_key()))
        server.serve_client_js(app)
        async with TestClient(TestServer(app)) as http:
            response = await http.get("/client.js")
            out["own app /client.js"] = response.status, "export class Client" in await response.text()
        print(json.dumps(out))

    asyncio.run(main())
""")


def test_a_plain_install_works_from_any_directory(tmp_path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([str(python), "-c", INSTALLED_CHECK], cwd=elsewhere, capture_output=True, text=True,
                            env={"SESSION_KEY": server.new_key().decode(), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["file"].startswith(str(venv))  # the installed copy, not this checkout
    assert out["typed"]
    assert out["/"] == out["/static/client.js"] == out["/static/app.js"] == 200
    assert out["own app /client.js"] == [200, True]


async def test_the_test_client_fails_loudly_on_frames_the_protocol_forbids() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"event": "connected", "data": {"socket": "s1", "user": None}}))
        await ws.send_str(request.query["bad"])
        await ws.receive()  # until the client closes
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with TestClient(TestServer(app)) as http:
        for bad in ("[1]", '{"data": 1}', "not json"):
            socket = await connect(http, "/ws?bad=" + bad)
            with pytest.raises(AssertionError, match="the test socket failed"):
                await socket.receive()
            await socket.close()

