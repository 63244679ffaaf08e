"""Redis that stops answering: frozen (SIGSTOP), or cut off from one process by a frozen proxy.

Nothing waits longer than the stated bound (`--redis-timeout` x 4/3), a process that cannot
hear Redis stops trusting its session cache within 3 s, and everything recovers by itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import aiohttp

from tests.helpers import Browser, FreezableProxy, RunPy, ask, call, until

TIMEOUT = 1.5  # the default --redis-timeout
BOUND = TIMEOUT * 4 / 3 + 0.5  # the documented bound, and half a second for a busy test machine


async def test_a_frozen_redis_is_answered_within_the_bound_and_recovers(redis_server):
    async with RunPy("--redis", redis_server.url) as server, Browser(server.url) as alice, \
            Browser(server.url) as bob:
        await alice.login()
        ws = await alice.connect()
        await call(ws, "join", {"room": "lobby"})
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            frozen = time.monotonic()
            # Until the link notices, sessions may be served from the cache; then `unavailable`.
            await until(lambda: _failed(ws), "an unavailable answer")
            assert time.monotonic() - frozen < BOUND
            for probe in (lambda: alice.call("POST", "/api/incr"), lambda: alice.call("GET", "/healthz"),
                          lambda: bob.call("POST", "/api/login", {"username": "bob", "password": "builder"})):
                started = time.monotonic()
                status, body = await probe()
                assert (status, body["error"]["code"]) == (503, "unavailable")
                assert time.monotonic() - started < BOUND
            started = time.monotonic()
            assert (await ask(ws, "join", {"room": "other"}))["error"]["code"] == "unavailable"
            assert time.monotonic() - started < BOUND
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        await until(lambda: _healthy(alice), "recovery")
        # The same socket, never closed, works again; so do the HTTP routes.
        assert await call(ws, "incr") == {"count": 1}
        assert (await alice.call("POST", "/api/incr"))[1] == {"count": 2}
        assert (await call(ws, "join", {"room": "other"}))["members"] == 1
    # The cause is logged once per outage, not once per request.
    lines = [line for line in server.output if "unreachable" in line]
    assert len(lines) == 1 and "no answer from Redis within 1.5 s" in lines[0], lines


async def test_a_process_cut_off_from_redis_stops_serving_a_logged_out_session_within_3_s(redis_server):
    async with FreezableProxy(redis_server.port) as proxy, \
            RunPy("--redis", f"redis://127.0.0.1:{proxy.port}/0") as cut_off, \
            RunPy("--redis", redis_server.url) as other, Browser(other.url) as alice:
        await alice.login()
        ws = await alice.connect(url=cut_off.url)
        assert await call(ws, "echo", 1) == 1
        proxy.freeze()
        assert (await alice.call("POST", "/api/logout"))[0] == 200  # through the other process
        logged_out = time.monotonic()
        last_served = logged_out
        while time.monotonic() - logged_out < 4:
            reply = await ask(ws, "echo", 2)
            if "error" not in reply:
                last_served = time.monotonic()
            else:
                assert reply["error"]["code"] == "unavailable"
            await asyncio.sleep(0.05)
        assert last_served - logged_out < 3.0
        proxy.thaw()
        # Once it hears Redis again, it finds the session gone: 4001 on the next event.
        async with asyncio.timeout(10):
            while True:
                await ws.send_str(json.dumps({"event": "echo", "id": 1}))
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                assert json.loads(msg.data)["error"]["code"] == "unavailable", msg.data
                await asyncio.sleep(0.05)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4001)


async def _failed(ws) -> bool:  # type: ignore[no-untyped-def]
    reply = await ask(ws, "echo", 0)
    return "error" in reply and reply["error"]["code"] == "unavailable"


async def _healthy(browser: Browser) -> bool:
    return (await browser.call("GET", "/healthz"))[0] == 200

