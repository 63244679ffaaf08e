"""Logout, a newer login and expiry really disconnect (protocol.md, "Close codes")."""

import asyncio
import time

import pytest
from redis.asyncio import Redis

from server.testing import Closed
from tests.helpers import Browser


async def test_logout_closes_that_sessions_sockets_with_4001_only(alice, make_browser):
    other_alice = await make_browser()
    await other_alice.login("alice")  # the same user in another browser
    tab1, tab2, elsewhere = await alice.socket(), await alice.socket(), await other_alice.socket()
    status, _ = await alice.call("POST", "/api/logout")
    assert status == 200
    assert await tab1.wait_closed() == 4001
    assert tab1.close_reason == "logged out"
    assert await tab2.wait_closed() == 4001
    assert await elsewhere.request("echo", "still logged in") == "still logged in"
    status, _ = await alice.call("GET", "/api/me")
    assert status == 401


async def test_a_new_login_replaces_the_session_and_closes_its_sockets_with_4003(alice):
    old = await alice.socket()
    await alice.login("bob")  # the same browser logs in again
    assert await old.wait_closed() == 4003
    assert old.close_reason == "session replaced by a newer login"
    fresh = await alice.socket()
    assert fresh.user["name"] == "bob"


@pytest.mark.parametrize("storage", ["redis"])
async def test_login_deletes_the_old_redis_key_and_logout_the_current_one(alice, base_url, settings):
    redis = Redis.from_url(settings.redis_url)
    prefix = settings.cookie_name + "_"
    first = [k async for k in redis.scan_iter(prefix + "*")]
    assert len(first) == 1
    stolen = alice.cookie()
    await alice.login("alice")
    second = [k async for k in redis.scan_iter(prefix + "*")]
    assert len(second) == 1 and second != first
    async with Browser(base_url) as replay:  # the old cookie is worth nothing now
        with pytest.raises(Closed) as refused:
            await replay.socket(headers={"Cookie": stolen})
        assert refused.value.code == 4401
    await alice.call("POST", "/api/logout")
    assert [k async for k in redis.scan_iter(prefix + "*")] == []
    await redis.aclose()


async def test_expiry_closes_an_idle_socket_with_4002(serve, settings):
    base_url = await serve(settings, session_max_age=1, session_check_interval=0.1)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.socket()
        assert await ws.wait_closed() == 4002  # within max_age + 1 s
        assert ws.close_reason == "session expired"
        status, _ = await b.call("GET", "/api/me")
        assert status == 401  # HTTP agrees the session is over


async def test_expiry_is_noticed_by_the_next_message(serve, settings):
    base_url = await serve(settings, session_max_age=1, session_check_interval=3600)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.socket()
        assert await ws.request("echo", 1) == 1
        await asyncio.sleep(2.1)  # time itself is what is tested: the session outlives max_age + 1 s
        with pytest.raises(Closed) as closed:  # the close answers the event: its handler never ran
            await ws.request("echo", 2)
        assert closed.value.code == 4002


@pytest.mark.parametrize("storage", ["redis"])
async def test_a_session_deleted_behind_the_servers_back_closes_with_4001(alice, settings):
    ws = await alice.socket()
    redis = Redis.from_url(settings.redis_url)
    keys = [k async for k in redis.scan_iter(settings.cookie_name + "_*")]
    await redis.delete(*keys)
    await redis.aclose()
    with pytest.raises(Closed) as closed:
        await ws.request("echo", 1)
    assert closed.value.code == 4001


@pytest.mark.parametrize("storage", ["redis"])
async def test_a_closing_socket_never_writes_its_stale_session_back(alice):
    ws = await alice.socket()
    await alice.call("POST", "/api/incr")
    await ws.close()
    await alice.login("bob")  # a newer login in the same browser
    _, body = await alice.call("GET", "/api/me")
    assert body["user"]["name"] == "bob"
    _, body = await alice.call("POST", "/api/incr")
    assert body == {"count": 1}  # bob's fresh session, untouched by alice's old socket


async def test_writes_do_not_extend_a_session_past_max_age(serve, settings):
    """A session ends `max_age` after login, however often HTTP routes and sockets write it."""
    base_url = await serve(settings, session_max_age=2, session_check_interval=3600)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.socket()
        logged_in = time.monotonic()
        status = 200
        while status == 200 and time.monotonic() - logged_in < 5:  # each write would re-stamp a sliding session
            status, _ = await b.call("POST", "/api/incr")
            if status == 200 and settings.redis_url:
                await ws.request("incr")
            await asyncio.sleep(0.2)  # writes spread over time: time itself is what is tested
        assert status == 401
        assert 2 - 0.3 <= time.monotonic() - logged_in < 2 + 1.0
        with pytest.raises(Closed) as closed:
            await ws.request("echo", 1)
        assert closed.value.code == 4002
