"""Two `python run.py --redis` processes sharing one private redis-server."""

import asyncio
import json
import signal

import pytest

from tests.helpers import Browser, RunPy, ask, call, expect_close, expect_event

TTL = 1.0


@pytest.fixture
async def pair(redis_server):
    env = {"INSTANCE_TTL": str(TTL), "SESSION_CHECK_INTERVAL": "0.2"}
    async with RunPy("--redis", redis_server.url, env=env) as a, RunPy("--redis", redis_server.url, env=env) as b:
        yield a, b


async def test_chat_and_room_sizes_across_processes(pair):
    a, b = pair
    async with Browser(a.url) as alice, Browser(b.url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        on_a, on_b = await alice.connect(), await bob.connect()
        joined_a = await call(on_a, "join", {"room": "lobby"})
        joined_b = await call(on_b, "join", {"room": "lobby"})
        assert (joined_a["members"], joined_b["members"]) == (1, 2)
        assert joined_a["epoch"] == joined_b["epoch"]  # one history for the room, in Redis
        await on_a.send_str(json.dumps({"event": "chat", "data": {"room": "lobby", "text": "from A"}}))
        assert (await expect_event(on_b, "chat"))["text"] == "from A"
        assert (await expect_event(on_a, "chat"))["text"] == "from A"  # once, on its own instance too
        await on_b.send_str(json.dumps({"event": "chat", "data": {"room": "lobby", "text": "from B"}}))
        assert (await expect_event(on_a, "chat"))["text"] == "from B"
        # Exactly once: the next frame on A is the ack of this echo, not a duplicate chat.
        assert await call(on_a, "echo", "after") == "after"
        assert await call(on_b, "leave", {"room": "lobby"}) == {"room": "lobby", "members": 1}


async def test_http_on_one_process_reaches_sockets_on_the_other(pair):
    a, b = pair
    async with Browser(a.url) as alice:
        await alice.login("alice")
        on_a = await alice.connect()
        alice.base_url = b.url.rstrip("/")  # the same browser, now served by B
        assert (await alice.call("POST", "/api/incr"))[1] == {"count": 1}
        assert await expect_event(on_a, "count") == {"count": 1}
        await alice.call("POST", "/api/notify", {"message": "via B"})
        assert (await expect_event(on_a, "notification"))["message"] == "via B"


async def test_logout_on_one_process_closes_sockets_on_the_other(pair):
    a, b = pair
    async with Browser(a.url) as alice, Browser(b.url) as other:
        await alice.login("alice")
        await other.login("alice")  # the same user, another session, on B
        alice.base_url = b.url.rstrip("/")
        on_b = await alice.connect()
        alice.base_url = a.url.rstrip("/")
        on_a = await alice.connect()
        other_on_b = await other.connect()
        await alice.call("POST", "/api/logout")  # served by A
        await expect_close(on_a, 4001)
        await expect_close(on_b, 4001)
        assert await call(other_on_b, "echo", "still in") == "still in"


async def test_expiry_is_enforced_on_both(redis_server):
    env = {"SESSION_MAX_AGE": "1", "SESSION_CHECK_INTERVAL": "0.2"}
    async with RunPy("--redis", redis_server.url, env=env) as a, RunPy("--redis", redis_server.url, env=env) as b:
        async with Browser(a.url) as alice:
            await alice.login("alice")
            on_a = await alice.connect()
            alice.base_url = b.url.rstrip("/")
            on_b = await alice.connect()
            await expect_close(on_a, 4002)
            await expect_close(on_b, 4002)


async def test_a_killed_process_leaves_no_ghost_members(pair):
    a, b = pair
    async with Browser(a.url) as alice, Browser(b.url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        await call(await alice.connect(), "join", {"room": "lobby"})
        on_b = await bob.connect()
        assert (await call(on_b, "join", {"room": "lobby"}))["members"] == 2
        await a.stop(signal.SIGKILL)
        await asyncio.sleep(TTL + 0.2)  # the cleanup bound is a time: the dead instance's key expires
        assert (await call(on_b, "join", {"room": "lobby"}))["members"] == 1


async def healthy(*servers: RunPy, timeout: float = 15.0) -> None:
    """Wait until every server's /healthz answers 200 (Redis and its subscription are back)."""
    async with Browser(servers[0].url) as probe:
        async with asyncio.timeout(timeout):
            for server in servers:
                probe.base_url = server.url.rstrip("/")
                while (await probe.call("GET", "/healthz"))[0] != 200:
                    await asyncio.sleep(0.05)


async def test_a_long_outage_loses_no_socket_member_or_message(pair, redis_server):
    """Redis away for longer than the instance TTL: instance keys expire, and must come back."""
    a, b = pair
    async with Browser(a.url) as alice, Browser(b.url) as bob, Browser(b.url) as carol:
        await alice.login("alice")
        await bob.login("bob")
        await carol.login("bob")
        on_a, on_b = await alice.connect(), await bob.connect()
        await call(on_a, "join", {"room": "lobby"})
        assert (await call(on_b, "join", {"room": "lobby"}))["members"] == 2

        redis_server.stop()
        assert (await ask(on_a, "echo", 1))["error"]["code"] == "unavailable"
        assert (await alice.call("GET", "/healthz"))[0] == 503
        await asyncio.sleep(TTL + 0.5)  # past the instance TTL: Redis drops both instance keys
        redis_server.start()
        await healthy(a, b)

        # The same sockets work at once (no stale connection answers `unavailable`)...
        assert await call(on_a, "echo", 2) == 2
        assert await call(on_b, "echo", 3) == 3
        # ...messages cross instances as soon as /healthz says so...
        await on_a.send_str(json.dumps({"event": "chat", "data": {"room": "lobby", "text": "back"}}))
        assert (await expect_event(on_b, "chat"))["text"] == "back"
        # ...and every member still counts, on both instances.
        assert (await call(await carol.connect(), "join", {"room": "lobby"}))["members"] == 3
        assert (await call(on_a, "leave", {"room": "lobby"}))["members"] == 2
