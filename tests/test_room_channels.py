"""Per-room channels: a process subscribes to a room's channel only while it has sockets in
it, and a socket that joins misses nothing published after its ack, however often the
process subscribes and unsubscribes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis import Redis
from yarl import URL

import server
from server.redis_backplane import RedisBackplane
from server.testing import connect
from tests.helpers import FreezableProxy, until


def process(redis_url: str, name: str, linger: float = 0.0,
            clock: Any = lambda: None) -> tuple[web.Application, server.Hub]:
    """One server process of a deployment named `name` (its cookie and channel prefix)."""
    app = web.Application()
    sessions = server.RedisSessionBridge.from_url(redis_url, cookie_name=name)
    hub = server.setup(app, sessions, backplane=RedisBackplane(sessions.link, prefix=f"{name}:ws:", linger=linger))

    async def login(request: web.Request) -> web.Response:
        session, _ = await sessions.rotate(request)
        session["user"] = {"id": request.query["id"], "name": request.query["id"]}
        return web.json_response({"ok": True})

    @hub.on("join")
    async def join(socket: server.Socket, data: Any) -> dict[str, Any]:
        await socket.join(data)
        return {"at": clock()}  # what a test's clock read once the join was done

    @hub.on("leave")
    async def leave(socket: server.Socket, data: Any) -> dict[str, Any]:
        await socket.leave(data)
        return {"ok": True}

    app.router.add_post("/login", login)
    return app, hub


async def started(app: web.Application, user: str) -> TestClient:
    http = TestClient(TestServer(app))
    await http.start_server()
    assert (await http.post("/login", params={"id": user})).status == 200
    return http


async def test_a_process_subscribes_only_to_the_rooms_it_has_sockets_in(redis_url):
    name = "t" + uuid.uuid4().hex[:8]
    (app_a, hub_a), (app_b, hub_b) = process(redis_url, name), process(redis_url, name)
    http_a, http_b = await started(app_a, "ann"), await started(app_b, "bob")
    redis = Redis.from_url(redis_url)

    def subscribers(room: str) -> int:
        return dict(redis.pubsub_numsub(f"{name}:ws:r:{room}"))[f"{name}:ws:r:{room}".encode()]

    try:
        async with await connect(http_a) as ann, await connect(http_b) as bob:
            await ann.request("join", "busy")
            await bob.request("join", "quiet")
            assert subscribers("busy") == 1 and subscribers("quiet") == 1  # one process each
            assert "busy" in hub_a.backplane.subscribed and "busy" not in hub_b.backplane.subscribed
            for n in range(20):
                await hub_a.emit("chat", n, room="busy")
            await ann.request("leave", "busy")
            await until(lambda: asyncio.to_thread(lambda: subscribers("busy") == 0), "the unsubscribe")
            # Everyone still means everyone, on every process.
            await hub_a.emit("news", "for all")
            assert (await bob.receive("news")).data == "for all"
            assert [(await ann.receive("chat")).data for _ in range(20)] == list(range(20))
    finally:
        await http_a.close()
        await http_b.close()
        redis.close()


async def test_nothing_published_after_a_join_is_missed_while_subscriptions_come_and_go(redis_url):
    name = "t" + uuid.uuid4().hex[:8]
    published = 0
    proxy = FreezableProxy(URL(redis_url).port)  # between B and Redis
    await proxy.__aenter__()
    b_url = str(URL(redis_url).with_port(proxy.port))
    (app_a, hub_a), (app_b, hub_b) = process(redis_url, name), process(b_url, name, clock=lambda: published)
    http_a, http_b = await started(app_a, "ann"), await started(app_b, "bob")
    stop = asyncio.Event()

    async def publisher() -> None:  # on A: a numbered stream into the room, as fast as it goes
        nonlocal published
        while not stop.is_set():
            published += 1
            await hub_a.emit("tick", published, room="churn")
            await asyncio.sleep(0)

    task = asyncio.create_task(publisher())
    try:
        async with await connect(http_b) as bob:
            for _ in range(10):  # each leave drops B's subscription (linger 0), each join makes it again
                # B's SUBSCRIBE is held up on its way for a moment, as a busy link or
                # network would; everything published once the join is done on B must come.
                proxy.freeze()
                asyncio.get_running_loop().call_later(0.2, proxy.thaw)
                after = (await bob.request("join", "churn"))["at"]
                seen = []
                while not seen or seen[-1] < after + 30:
                    seen.append((await bob.receive("tick")).data)
                await bob.request("leave", "churn")
                await until(lambda: asyncio.sleep(0, "churn" not in hub_b.backplane.subscribed), "the unsubscribe")
                while True:  # what was on its way before the leave: then nothing more
                    try:
                        seen.append((await bob.receive("tick", timeout=0.2)).data)
                    except TimeoutError:
                        break
                assert seen == sorted(set(seen)), "a message came twice or out of order"
                start = seen.index(after + 1) if after + 1 in seen else None
                assert start is not None and seen[start:] == list(range(after + 1, seen[-1] + 1)), \
                    "a message published after the join's ack was missed"
    finally:
        stop.set()
        await task
        await http_a.close()
        await http_b.close()
        await proxy.__aexit__(None, None, None)


async def test_a_socket_gets_what_its_user_is_sent_as_soon_as_it_is_connected(redis_url):
    name = "t" + uuid.uuid4().hex[:8]
    proxy = FreezableProxy(URL(redis_url).port)  # between B and Redis
    await proxy.__aenter__()
    (app_a, hub_a), (app_b, hub_b) = process(redis_url, name), process(str(URL(redis_url).with_port(proxy.port)), name)

    @hub_b.on_connect
    async def slow_link(socket: server.Socket) -> None:  # B's SUBSCRIBE of the user's room is held up
        proxy.freeze()
        asyncio.get_running_loop().call_later(0.2, proxy.thaw)

    http_a, http_b = await started(app_a, "ann"), await started(app_b, "bob")
    try:
        async with await connect(http_b) as bob:  # `connected` came: bob is reachable from anywhere
            await hub_a.emit("note", "at once", room=server.user_room("bob"))
            assert (await bob.receive("note")).data == "at once"
    finally:
        await http_a.close()
        await http_b.close()
        await proxy.__aexit__(None, None, None)
