"""Session writes that race a logout (Redis storage): a destroyed session stays destroyed."""

import asyncio
import json

from aiohttp import web
from redis.asyncio import Redis

from server.app import HUB, make_app
from server.sessions import SID_KEY
from tests.helpers import Browser, expect_close


async def start(aiohttp_server, settings, setup) -> str:
    app = make_app(settings)
    setup(app, app[HUB])
    return str((await aiohttp_server(app)).make_url("/"))


async def stored_sessions(redis_url: str, sid: str) -> list[bytes]:
    """Every stored session that carries this browser session's id."""
    redis = Redis.from_url(redis_url)
    try:
        found = []
        async for key in redis.scan_iter("session_*"):
            raw = await redis.get(key)
            if raw and json.loads(raw).get("session", {}).get(SID_KEY) == sid:
                found.append(raw)
        return found
    finally:
        await redis.aclose()


async def test_a_socket_write_racing_logout_does_not_bring_the_session_back(aiohttp_server, settings_for, redis_url):
    gate, started, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def setup(app, hub):
        @hub.on("slow_write")
        async def slow_write(socket, data):
            started.set()
            await gate.wait()  # the logout happens here, after this event's reload
            try:
                await socket.update_session({"note": "late"})
            finally:
                finished.set()

    base_url = await start(aiohttp_server, settings_for(redis_url), setup)
    async with Browser(base_url) as alice:
        await alice.login()
        ws = await alice.connect()
        sid = (await stored_session_id(redis_url, alice))
        await ws.send_str(json.dumps({"event": "slow_write", "id": 1}))
        await started.wait()
        old_cookie = alice.cookie()
        assert (await alice.call("POST", "/api/logout"))[0] == 200
        gate.set()
        await expect_close(ws, 4001)
        await asyncio.wait_for(finished.wait(), 5)
        assert await stored_sessions(redis_url, sid) == []
        status, _ = await alice.call("GET", "/api/me", headers={"Cookie": old_cookie})
        assert status == 401


async def test_an_http_write_racing_logout_does_not_bring_the_session_back(aiohttp_server, settings_for, redis_url):
    gate = asyncio.Event()
    started = asyncio.Event()

    def setup(app, hub):
        async def slow_write(request):
            session = await app[HUB].sessions.get(request)
            started.set()
            await gate.wait()  # the logout happens here; the session is saved after this
            session["note"] = "late"
            return web.json_response({"ok": True})

        app.router.add_post("/api/slow_write", slow_write)

    base_url = await start(aiohttp_server, settings_for(redis_url), setup)
    async with Browser(base_url) as alice, Browser(base_url) as same_browser:
        await alice.login()
        sid = await stored_session_id(redis_url, alice)
        same_browser.http.cookie_jar.update_cookies({"session": alice.cookie().split("=", 1)[1]})
        old_cookie = alice.cookie()
        request = asyncio.create_task(same_browser.call("POST", "/api/slow_write"))
        await started.wait()
        assert (await alice.call("POST", "/api/logout"))[0] == 200
        gate.set()
        assert (await request)[0] == 200
        assert await stored_sessions(redis_url, sid) == []
        status, _ = await alice.call("GET", "/api/me", headers={"Cookie": old_cookie})
        assert status == 401


async def stored_session_id(redis_url: str, browser: Browser) -> str:
    redis = Redis.from_url(redis_url)
    try:
        raw = await redis.get("session_" + browser.cookie().split("=", 1)[1])
        return json.loads(raw)["session"][SID_KEY]
    finally:
        await redis.aclose()
