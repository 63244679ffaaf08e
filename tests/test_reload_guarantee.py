"""Issue 5's guarantee for the cached per-message reload (server/redis_tracking.py): a
socket message's reload sees every change an HTTP request made before the message was
sent, whichever process served that request."""

import asyncio

import pytest

from tests.helpers import Browser, RunPy, call

SESSIONS = 25
ROUNDS = 5


@pytest.fixture
async def pair(redis_server):
    async with RunPy("--redis", redis_server.url) as a, RunPy("--redis", redis_server.url) as b:
        yield a, b


async def test_an_http_change_just_before_a_burst_is_seen_by_every_socket(pair):
    a, b = pair
    browsers = [Browser(a.url) for _ in range(SESSIONS)]
    try:
        await asyncio.gather(*(browser.login("alice") for browser in browsers))
        sockets = await asyncio.gather(*(browser.connect() for browser in browsers))
        # Every session's value is now in A's cache: read by a reload, not written since.
        assert await asyncio.gather(*(call(ws, "incr") for ws in sockets)) == [{"count": 1}] * SESSIONS
        await asyncio.gather(*(call(ws, "echo") for ws in sockets))
        count = 1
        for _ in range(ROUNDS):
            for browser in browsers:
                browser.base_url = b.url.rstrip("/")  # the same browsers, now served by B
            statuses = await asyncio.gather(*(browser.call("POST", "/api/incr") for browser in browsers))
            assert statuses == [(200, {"count": count + 1})] * SESSIONS
            # The burst: every socket on A at once, right after B answered.
            acks = await asyncio.gather(*(call(ws, "incr") for ws in sockets))
            count += 2
            assert acks == [{"count": count}] * SESSIONS
    finally:
        for browser in browsers:
            await browser.__aexit__(None, None, None)
