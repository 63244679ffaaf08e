"""Redis goes away under open sockets and comes back (a real redis-server, stopped and started)."""

import asyncio
import time

import pytest

from server.app import HUB
from server.errors import Unavailable
from server.hub import user_room
from tests.helpers import Browser, ask, call, expect_event


async def test_sockets_survive_an_outage_and_recover(aiohttp_server, redis_server, settings_for):
    from server.app import make_app

    app = make_app(settings_for(redis_server.url))
    hub = app[HUB]
    server = await aiohttp_server(app)
    url = str(server.make_url("/"))
    async with Browser(url) as alice, Browser(url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        await alice.call("POST", "/api/incr")
        a, b = await alice.connect(), await bob.connect()
        await call(a, "join", {"room": "lobby"})
        await call(b, "join", {"room": "lobby"})
        await hub.backplane.connected.wait()

        redis_server.stop()
        # An event that needs Redis (the demo reloads the session before each) says so...
        assert (await ask(a, "echo", 1))["error"]["code"] == "unavailable"
        assert (await ask(b, "incr"))["error"]["code"] == "unavailable"
        async with asyncio.timeout(5):  # the subscriber notices by itself, and retries
            while hub.backplane.connected.is_set():
                await asyncio.sleep(0.01)
        # ...a room event, whose position comes from Redis, is sent to no one rather than
        # to some (protocol.md, "Recovery"), while other emits reach this process's sockets...
        with pytest.raises(Unavailable):
            await hub.emit("chat", {"text": "lost"}, room="lobby")
        await hub.emit("notification", {"message": "local"}, room=user_room(1))
        assert (await expect_event(a, "notification"))["message"] == "local"
        # ...and the health check tells the load balancer.
        assert (await alice.call("GET", "/healthz"))[0] == 503
        status, body = await alice.call("POST", "/api/incr")
        assert status == 503 and body["error"]["code"] == "unavailable"

        redis_server.start()
        back = time.monotonic()
        await asyncio.wait_for(hub.backplane.connected.wait(), 10)  # resubscribed by itself
        assert time.monotonic() - back < 1.5  # reconnect attempts are at most 1 s apart
        assert (await alice.call("GET", "/healthz"))[0] == 200
        # The same sockets, never dropped, work again, and nothing written before is lost.
        assert await call(a, "echo", 2) == 2
        assert await call(a, "incr") == {"count": 2}
        assert (await call(b, "join", {"room": "lobby"}))["members"] == 2
