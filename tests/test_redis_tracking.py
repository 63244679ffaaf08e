"""The session cache that Redis invalidates (server/redis_tracking.py), against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from server.redis_link import RedisLink, RedisUnavailable
from server.redis_tracking import TrackingCache
from server.resp import encode_command, parse_reply


def test_parse_reply_reads_resp3_values_and_waits_for_the_rest():
    assert parse_reply(b"$5\r\nhello\r\n", 0) == (b"hello", 11)
    assert parse_reply(b"_\r\n", 0) == (None, 3)
    assert parse_reply(b"%1\r\n+a\r\n:1\r\n", 0) == ({b"a": 1}, 12)
    invalidation = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
    push, end = parse_reply(invalidation, 0)
    assert list(push) == [b"invalidate", [b"k"]] and end == len(invalidation)
    for cut in range(1, len(invalidation)):  # any prefix of a value is "not yet"
        assert parse_reply(invalidation[:cut], 0) is None
    assert encode_command("GET", b"k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def cache(redis_url):
    link = RedisLink.from_url(redis_url, tracking=True)
    cache = TrackingCache(link)
    await link.start()
    await asyncio.wait_for(link.up.wait(), 5)
    yield cache
    await link.close()


async def get_calls(redis: Redis) -> int:
    return (await redis.info("commandstats")).get("cmdstat_get", {}).get("calls", 0)


async def until(condition, timeout: float = 5.0) -> None:
    """Wait for a push from Redis: there is no event to await but the cache's own state."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_a_second_read_is_served_without_asking_redis(cache, redis):
    await redis.set("k1", b"v1")
    assert await cache.get("k1") == b"v1"
    before = await get_calls(redis)
    assert await cache.get("k1") == b"v1"
    assert await get_calls(redis) == before


async def test_a_change_by_another_client_invalidates_the_cached_value(cache, redis):
    await redis.set("k2", b"old")
    assert await cache.get("k2") == b"old"
    await redis.set("k2", b"new")
    await until(lambda: b"k2" not in cache._values)
    assert await cache.get("k2") == b"new"
    await redis.delete("k2")
    await until(lambda: b"k2" not in cache._values)
    assert await cache.get("k2") is None


async def test_forget_drops_a_value_at_once(cache, redis):
    await redis.set("k3", b"old")
    assert await cache.get("k3") == b"old"
    await redis.set("k3", b"new")
    cache.forget("k3")  # what the session bridge does after its own writes
    assert await cache.get("k3") == b"new"


async def test_a_flush_empties_the_cache(cache, redis):
    await redis.set("k4", b"v")
    assert await cache.get("k4") == b"v"
    await redis.flushdb()
    await until(lambda: not cache._values)
    assert await cache.get("k4") is None


async def test_nothing_is_served_while_redis_is_away_and_tracking_comes_back(redis_server):
    redis = Redis.from_url(redis_server.url)
    link = RedisLink.from_url(redis_server.url, tracking=True)
    cache = TrackingCache(link)
    await link.start()
    try:
        await asyncio.wait_for(link.up.wait(), 5)
        await redis.set("k", b"before")
        assert await cache.get("k") == b"before"
        redis_server.stop()
        await until(lambda: not link.up.is_set())
        with pytest.raises(RedisUnavailable):
            await cache.get("k")  # not the cached value: it may be stale by now
        redis_server.start()
        await asyncio.wait_for(link.up.wait(), 10)
        await redis.aclose()
        redis = Redis.from_url(redis_server.url)
        await redis.set("k", b"after")
        assert await cache.get("k") == b"after"
    finally:
        await link.close()
        await redis.aclose()
