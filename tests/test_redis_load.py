"""Redis mode under a crowd: two real `python run.py --redis` processes, one private redis-server.

Bursts queue, they are not refused; no acknowledged increment is lost; every chat crosses
processes; room sizes come back to exactly 0.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from redis.asyncio import Redis

from tests.helpers import Crowd, RunPy, ask, ask_many, call, expect_event, login_cookie

ENV = {"LOG_LEVEL": "warning"}  # thousands of connect lines are not what these tests read


@pytest.fixture
async def pair(redis_server):
    async with RunPy("--redis", redis_server.url, env=ENV) as a, RunPy("--redis", redis_server.url, env=ENV) as b:
        yield a, b


async def test_a_reconnect_storm_of_1000_sockets_is_served(pair):
    a, _ = pair
    async with Crowd(await login_cookie(a.url)) as crowd:
        sockets = await crowd.connect(a.url, 1000)  # raises on any refused upgrade
        assert all(ws.connected["user"]["name"] == "alice" for ws in sockets)
        # 1000 events that write Redis (room sizes), at the same moment, from 1000 sockets.
        acks = await asyncio.gather(*(ask(ws, "join", {"room": f"r{i % 20}"}) for i, ws in enumerate(sockets)))
        assert Counter("error" in ack for ack in acks) == {False: 1000}, [a for a in acks if "error" in a][:3]
        assert (await call(sockets[0], "leave", {"room": "r0"}))["members"] == 49


async def test_2000_concurrent_increments_over_http_and_sockets_are_all_kept(pair):
    a, b = pair
    cookie = await login_cookie(a.url, "bob")
    async with Crowd(cookie) as crowd:
        sockets = await crowd.connect(a.url, 10) + await crowd.connect(b.url, 10)
        http = [crowd.post(f"{(a, b)[i % 2].url}api/incr") for i in range(1000)]
        events = [ask_many(ws, "incr", 50) for ws in sockets]  # 20 sockets x 50 = 1000
        results = await asyncio.gather(*http, *events)
        statuses, acks = results[:1000], [ack for acks in results[1000:] for ack in acks]
        assert Counter(statuses) == {200: 1000}
        assert [ack for ack in acks if "error" in ack] == []
        # Every acknowledged increment is in the session: none overwrote another.
        counts = sorted(ack["data"]["count"] for ack in acks)
        assert len(set(counts)) == 1000
        status, body = await _get(crowd, a.url + "api/me")
        assert status == 200 and body["count"] == 2000


async def test_a_burst_of_300_chats_reaches_every_member_on_the_other_process(pair):
    a, b = pair
    async with Crowd(await login_cookie(a.url)) as alice, Crowd(await login_cookie(b.url, "bob")) as bob:
        senders = await alice.connect(a.url, 300)
        await asyncio.gather(*(call(ws, "join", {"room": "burst"}) for ws in senders))
        observer, = await bob.connect(b.url, 1)
        assert (await call(observer, "join", {"room": "burst"}))["members"] == 301
        acks = await asyncio.gather(*(ask(ws, "chat", {"room": "burst", "text": f"m{i}"})
                                      for i, ws in enumerate(senders)))
        assert [ack for ack in acks if "error" in ack] == []
        texts = [(await expect_event(observer, "chat"))["text"] for _ in range(300)]
        assert sorted(texts) == sorted(f"m{i}" for i in range(300))


async def test_room_sizes_are_exact_after_250_sockets_on_two_processes_close_at_once(pair, redis_server):
    a, b = pair
    cookie = await login_cookie(a.url)
    async with Crowd(cookie) as crowd, Crowd(cookie) as probe:
        members = await crowd.connect(a.url, 50) + await crowd.connect(b.url, 200)
        await asyncio.gather(*(call(ws, "join", {"room": "crowd"}) for ws in members))
        watcher, = await probe.connect(a.url, 1)
        assert (await call(watcher, "join", {"room": "crowd"}))["members"] == 251
        await crowd.close()  # all 250 at the same moment
        # The servers finish each close after the client's side: wait for the count to settle.
        async with asyncio.timeout(10):
            while (await call(watcher, "join", {"room": "crowd"}))["members"] != 1:
                await asyncio.sleep(0.05)
        assert (await call(watcher, "leave", {"room": "crowd"}))["members"] == 0
        redis = Redis.from_url(redis_server.url)
        try:
            assert await redis.keys("*room:crowd*") == []  # no size left behind in Redis either
        finally:
            await redis.aclose()


async def _get(crowd: Crowd, url: str) -> tuple[int, dict]:
    async with crowd.http.get(url, headers=crowd.headers) as r:
        return r.status, json.loads(await r.text())

