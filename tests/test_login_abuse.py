"""Login floods: failures throttled per address and per username, hashing off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp

from tests.helpers import Browser, RunPy

WRONG = {"username": "alice", "password": "guess"}


def from_address(address: str) -> aiohttp.ClientSession:
    """An HTTP client whose connections come from another loopback address."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=0),
                                 cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(http: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict, str | None]:
    async with http.post(url + "api/login", json=body) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


async def test_failed_logins_are_throttled_per_address_and_per_username_but_not_for_known_browsers():
    async with RunPy() as server, Browser(server.url) as alice:
        await alice.login("alice")  # alice's own browser, on 127.0.0.1
        async with from_address("127.0.0.2") as attacker, from_address("127.0.0.3") as newcomer:
            for _ in range(10):  # the username's burst: each one is checked, and fails
                assert (await login(attacker, server.url, WRONG))[0] == 401
            for _ in range(20):  # the address's burst (3x: people share addresses), on other names
                assert (await login(attacker, server.url, {"username": f"carol{_}", "password": "x"}))[0] == 401
            status, body, retry = await login(attacker, server.url, WRONG)
            assert (status, body["error"]["code"]) == (429, "rate_limited") and int(retry) >= 1
            # A new address may not try alice while the attack lasts, but may log in as bob...
            assert (await login(newcomer, server.url, {"username": "alice", "password": "wonderland"}))[0] == 429
            assert (await login(newcomer, server.url, {"username": "bob", "password": "builder"}))[0] == 200
        # ...and alice's own browser, which has logged in as alice before, is never locked out.
        await alice.login("alice")


async def test_a_login_flood_is_answered_at_once_past_the_queue():
    async with RunPy() as server, from_address("127.0.0.4") as http:
        statuses = Counter()
        replies = await asyncio.gather(*(login(http, server.url, {"username": f"u{i}", "password": "x"})
                                         for i in range(64)))
        for status, body, retry in replies:
            statuses[status] += 1
        # The address's burst of 30 is checked (at most 32 wait for the hash), the rest are refused
        # before any hashing, however many arrive at once.
        assert statuses[401] == 30 and statuses[429] == 34, statuses


async def test_the_server_answers_before_hashing_200_demo_users():
    users = ",".join(f"user{i}:secret{i}" for i in range(200))  # about 12 s of scrypt on one thread
    started = time.monotonic()
    async with RunPy(env={"DEMO_USERS": users}) as server, Browser(server.url) as b:
        assert (await b.call("GET", "/healthz"))[0] == 200
        assert time.monotonic() - started < 5  # not after the hashing: it runs beside the event loop
        status, _ = await b.call("POST", "/api/login", {"username": "user0", "password": "secret0"})
        assert status == 200
