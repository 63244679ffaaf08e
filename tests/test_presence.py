"""Presence: who is in a room, live, across processes, with no ghosts (protocol.md, "Presence")."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

import server
from server.presence import WINDOW
from server.testing import TestSocket, connect
from tests.helpers import Browser, Crowd, RunPy, ask, login_cookie, until

TTL = 1.0
LOBBY = {"room": "lobby"}
ALICE, BOB = {"id": 1, "name": "alice"}, {"id": 2, "name": "bob"}
ENV = {"INSTANCE_TTL": str(TTL), "LOG_LEVEL": "warning"}


@pytest.fixture
async def pair(redis_server) -> AsyncIterator[tuple[RunPy, RunPy]]:
    async with RunPy("--redis", redis_server.url, env=ENV) as a, RunPy("--redis", redis_server.url, env=ENV) as b:
        yield a, b


async def diff(socket: TestSocket) -> tuple[list[Any], list[Any]]:
    """The next `presence` frame of `socket`, as (joined, left)."""
    data = (await socket.receive("presence")).data
    assert data["room"] == "lobby", data
    return data["joined"], data["left"]


async def present(socket: TestSocket) -> list[tuple[str, int]]:
    """Who `socket` is told is in the lobby: (name, sockets) pairs."""
    answer = await socket.request("presence", LOBBY)
    return [(user["name"], user["sockets"]) for user in answer["users"]]


async def tabs_open_and_close(a_url: str, b_url: str) -> None:
    """alice opens two tabs on A, bob one on B: each sees alice join once, and leave once."""
    async with Browser(a_url) as alice, Browser(b_url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        on_b = await bob.socket()
        await on_b.request("join", LOBBY)
        assert await diff(on_b) == ([BOB], [])  # the joining socket hears of itself too
        tab1 = await alice.socket()
        await tab1.request("join", LOBBY)
        assert await diff(on_b) == ([ALICE], [])
        assert await diff(tab1) == ([ALICE], [])
        tab2 = await alice.socket()
        await tab2.request("join", LOBBY)
        assert await until(lambda: _is(present(on_b), [("alice", 2), ("bob", 1)]), "alice's second tab counted")
        assert await present(tab2) == [("alice", 2), ("bob", 1)]
        await tab1.close()
        assert await until(lambda: _is(present(on_b), [("alice", 1), ("bob", 1)]), "alice's first tab closed")
        await tab2.close()
        # The next frame bob gets is alice leaving: her second tab made no `joined`, her
        # first tab's close no `left`.
        assert await diff(on_b) == ([], [ALICE])
        assert await present(on_b) == [("bob", 1)]
        await on_b.request("leave", LOBBY)
        assert (await ask(await bob.connect(), "presence", LOBBY))["error"]["code"] == "forbidden"


async def _is(answer: Any, expected: Any) -> bool:
    return await answer == expected


async def test_tabs_on_two_processes(pair):
    a, b = pair
    await tabs_open_and_close(a.url, b.url)


async def test_tabs_in_cookie_mode(tmp_path):
    async with RunPy(env={"SESSION_KEY_FILE": str(tmp_path / "key"), "LOG_LEVEL": "warning"}) as one:
        await tabs_open_and_close(one.url, one.url)


async def test_a_killed_process_has_its_users_leave_within_the_ttl(pair):
    a, b = pair
    async with Browser(a.url) as alice, Browser(b.url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        on_b = await bob.socket()
        await on_b.request("join", LOBBY)
        for _ in range(2):
            await (await alice.socket()).request("join", LOBBY)
        assert await until(lambda: _is(present(on_b), [("alice", 2), ("bob", 1)]), "alice's tabs counted")
        await on_b.receive("presence")  # bob joined
        assert await diff(on_b) == ([ALICE], [])
        await a.stop(signal.SIGKILL)
        killed = time.monotonic()
        # A's key expires within TTL of its last renewal; B looks every TTL / 10.
        assert await diff(on_b) == ([], [ALICE])
        assert time.monotonic() - killed < TTL + TTL / 10 + WINDOW + 0.5
        assert await present(on_b) == [("bob", 1)]


async def test_a_user_on_two_processes_stays_when_one_dies(pair, redis_server):
    a, b = pair
    async with Browser(a.url) as alice, Browser(b.url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        on_b = await bob.socket()
        await on_b.request("join", LOBBY)
        assert await diff(on_b) == ([BOB], [])
        await (await alice.socket()).request("join", LOBBY)
        assert await diff(on_b) == ([ALICE], [])
        alice.base_url = b.url.rstrip("/")
        alice_on_b = await alice.socket()  # the same login, now served by B
        await alice_on_b.request("join", LOBBY)
        assert await until(lambda: _is(present(on_b), [("alice", 2), ("bob", 1)]), "both of alice's tabs counted")
        await a.stop(signal.SIGKILL)
        assert await until(lambda: _is(present(on_b), [("alice", 1), ("bob", 1)]), "A's tab gone")
        redis = Redis.from_url(redis_server.url)
        try:  # swept: B alone is left in the set of instances
            assert await until(lambda: _len(redis.smembers("session:ws:presence-instances"), 1), "A swept")
        finally:
            await redis.aclose()
        await alice_on_b.close()
        # The next frame: alice left, only now (not when A died, nor joined again).
        assert await diff(on_b) == ([], [ALICE])


async def _len(members: Any, n: int) -> bool:
    return len(await members) == n


async def test_a_thousand_sockets_of_one_user_make_one_joined_and_one_left(pair):
    a, b = pair
    async with Browser(b.url) as bob, Crowd(await login_cookie(a.url)) as crowd:
        await bob.login("bob")
        on_b = await bob.socket()
        await on_b.request("join", LOBBY)
        assert await diff(on_b) == ([BOB], [])
        sockets = await crowd.connect(a.url, 500) + await crowd.connect(b.url, 500)
        acks = await asyncio.gather(*(ask(ws, "join", LOBBY) for ws in sockets))
        assert [ack for ack in acks if "error" in ack] == []
        assert await until(lambda: _is(present(on_b), [("alice", 1000), ("bob", 1)]), "1000 tabs counted")
        await crowd.close()
        assert await until(lambda: _is(present(on_b), [("bob", 1)]), "1000 tabs closed")
        # Frames in order: alice joined (once, for 1000 sockets on two processes), alice
        # left (once), and nothing else.
        assert await diff(on_b) == ([ALICE], [])
        assert await diff(on_b) == ([], [ALICE])
        await on_b.request("echo", "fence")
        with pytest.raises(TimeoutError):
            await on_b.receive("presence", timeout=0)


async def test_state_lost_in_redis_is_written_again(pair, redis_server):
    a, b = pair
    async with Browser(a.url) as alice, Browser(b.url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        on_b = await bob.socket()
        await on_b.request("join", LOBBY)
        await (await alice.socket()).request("join", LOBBY)
        assert await until(lambda: _is(present(on_b), [("alice", 1), ("bob", 1)]), "alice counted")
        redis = Redis.from_url(redis_server.url)
        try:  # what a Redis restart without its data does to presence, sessions spared
            lost = [key async for key in redis.scan_iter("session:ws:*")]
            assert await redis.delete(*lost)
        finally:
            await redis.aclose()
        # Only A knows of alice's socket now: it finds its key gone and writes its share again.
        assert await until(lambda: _is(present(on_b), [("alice", 1), ("bob", 1)]), "alice counted again")


async def test_an_outage_longer_than_the_ttl_reports_nobody_left(pair, redis_server):
    a, b = pair
    async with Browser(a.url) as alice, Browser(b.url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        on_b = await bob.socket()
        await on_b.request("join", LOBBY)
        assert await diff(on_b) == ([BOB], [])
        on_a = await alice.socket()
        await on_a.request("join", LOBBY)
        assert await diff(on_b) == ([ALICE], [])
        redis_server.stop()
        with pytest.raises(server.RequestFailed) as refused:
            await on_b.request("presence", LOBBY)
        assert refused.value.code == "unavailable"
        await asyncio.sleep(TTL + 0.5)  # past the TTL: both instance keys expire in Redis
        redis_server.start()
        assert await until(lambda: _ok(present(on_b), [("alice", 1), ("bob", 1)]), "presence back")
        # None from the outage: a false `left` of alice (B sweeping A before A was back) comes
        # before this answer, and would pass for the frame awaited below.
        with pytest.raises(TimeoutError):
            await on_b.receive("presence", timeout=0)
        await on_a.close()
        # bob's next frame: alice leaving now; none from the outage.
        assert await diff(on_b) == ([], [ALICE])


async def _ok(answer: Any, expected: Any) -> bool:
    try:
        return await answer == expected
    except server.RequestFailed:
        return False  # unavailable until the link is back


# -- the library: any users, `hub.presence` from HTTP, the opt-in -------------------------


def presence_app(sessions: server.SessionBridge) -> web.Application:
    """An app of the library's: any user id logs in; presence in every room but `quiet`."""
    app = web.Application()
    hub = server.setup(app, sessions, presence=lambda room: room != "quiet")

    async def login(request: web.Request) -> web.Response:
        session, _ = await sessions.rotate(request)
        number = int(request.match_info["id"])
        session["user"] = {"id": number, "name": f"user{number:04}"}
        return web.json_response({"ok": True})

    async def who(request: web.Request) -> web.Response:
        return web.json_response(await hub.presence(request.match_info["room"]))

    @hub.on("join")
    async def join(socket: server.Socket, data: Any) -> None:
        await socket.join(data["room"])

    app.router.add_post("/login/{id}", login)
    app.router.add_get("/who/{room}", who)
    return app


@pytest.fixture
async def library(storage: str, request: pytest.FixtureRequest, aiohttp_server: Any) -> str:
    if storage == "redis":
        url = request.getfixturevalue("redis_server").url
        sessions: server.SessionBridge = server.RedisSessionBridge.from_url(url)
    else:
        sessions = server.CookieSessionBridge(server.new_key())
    return str((await aiohttp_server(presence_app(sessions))).make_url("/"))


async def user_socket(http: aiohttp.ClientSession, base: str, number: int) -> TestSocket:
    async with http.post(f"{base}login/{number}") as response:
        cookie = response.cookies["session"].value
    return await connect(http, base.replace("http", "ws") + "ws", headers={"Cookie": f"session={cookie}"})


async def test_a_thousand_users_joining_at_once_make_a_few_frames(library):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        watcher = await user_socket(http, library, 0)
        await watcher.request("join", LOBBY)
        started = time.monotonic()
        crowd = await asyncio.gather(*(user_socket(http, library, n) for n in range(1, 1001)))
        await asyncio.gather(*(socket.request("join", LOBBY) for socket in crowd))
        took = time.monotonic() - started
        seen: set[int] = set()
        frames = 0
        while len(seen) < 1001:
            joined, left = await diff(watcher)
            assert left == []
            seen.update(user["id"] for user in joined)
            frames += 1
        # At most one frame a window, whatever the number of users (and the first window
        # may have started before the crowd did).
        assert frames <= took / WINDOW + 2, (frames, took)
        async with http.get(f"{library}who/lobby") as response:
            users = await response.json()
        assert len(users) == 1001 and users[1] == {"id": 1, "name": "user0001", "sockets": 1}
        started = time.monotonic()
        await asyncio.gather(*(socket.close() for socket in crowd))
        gone: set[int] = set()
        frames = 0
        while len(gone) < 1000:
            joined, left = await diff(watcher)
            assert joined == []
            gone.update(user["id"] for user in left)
            frames += 1
        assert frames <= (time.monotonic() - started) / WINDOW + 2, frames
        async with http.get(f"{library}who/lobby") as response:
            assert await response.json() == [{"id": 0, "name": "user0000", "sockets": 1}]


async def test_presence_is_for_members_of_tracked_rooms(library):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        socket = await user_socket(http, library, 7)
        for data, code in [(LOBBY, "forbidden"), ({"room": 5}, "invalid_data"), ("lobby", "invalid_data"),
                           ({"room": "session:x"}, "forbidden")]:
            with pytest.raises(server.RequestFailed) as refused:
                await socket.request("presence", data)
            assert refused.value.code == code, data
        await socket.request("join", {"room": "quiet"})
        with pytest.raises(server.RequestFailed) as refused:
            await socket.request("presence", {"room": "quiet"})
        assert (refused.value.code, refused.value.message) == ("invalid_data", "presence is not tracked in 'quiet'")
        await socket.request("join", LOBBY)
        assert await socket.request("presence", LOBBY) == {
            "room": "lobby", "users": [{"id": 7, "name": "user0007", "sockets": 1}]}


# -- the demo page ---------------------------------------------------------------------------


async def test_the_demo_page_shows_who_is_in_the_room(chromium, tmp_path):
    from playwright.async_api import expect

    from tests.test_browser import log_in, open_page

    async with RunPy(env={"SESSION_KEY_FILE": str(tmp_path / "key")}) as one:
        bob = await open_page(await chromium.new_context(), one.url, [])
        await log_in(bob, "bob", "builder")
        await bob.click("#join")
        here = bob.locator("#presence li[data-room=lobby] .who")
        await expect(here).to_have_text(["bob"])
        alices = await chromium.new_context()  # one browser, two tabs: one login
        tab1 = await open_page(alices, one.url, [])
        await log_in(tab1, "alice", "wonderland")
        await tab1.click("#join")
        await expect(bob.locator("#messages")).to_contain_text("[lobby] alice joined")
        await expect(here).to_have_text(["alice", "bob"])
        tab2 = await open_page(alices, one.url, [])
        await expect(tab2.locator("#status")).to_have_text("Connected")
        await tab2.click("#join")
        await expect(tab2.locator("#presence li[data-room=lobby] .who")).to_have_text(["alice 2 tabs", "bob"])
        await tab2.close()
        await tab1.close()
        await expect(bob.locator("#messages")).to_contain_text("[lobby] alice left")
        await expect(here).to_have_text(["bob"])
        # Lines of others only: bob's own join is not announced to him.
        await expect(bob.locator("#messages li.presence-line")).to_have_text(
            ["[lobby] alice joined", "[lobby] alice left"])
