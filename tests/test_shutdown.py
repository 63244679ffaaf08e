"""Shutdown: every socket gets 1001 at once, and a running handler may finish."""

import asyncio

from aiohttp.test_utils import TestServer

from server.app import HUB, make_app
from tests.helpers import Browser, expect_close


async def test_shutdown_closes_with_1001_and_lets_running_handlers_finish(settings):
    started, finished = asyncio.Event(), []
    app = make_app(settings)
    hub = app[HUB]

    @hub.on("slow")
    async def slow(socket, data):
        started.set()
        await asyncio.sleep(0.5)
        finished.append(data)

    server = TestServer(app)
    await server.start_server()
    async with Browser(str(server.make_url("/"))) as b:
        await b.login()
        ws = await b.connect()
        await ws.send_str('{"event": "slow", "data": "work", "id": 1}')
        await started.wait()
        closing = asyncio.create_task(expect_close(ws, 1001))
        await server.close()
        assert await closing == "server shutting down"
    assert finished == ["work"]  # the handler ran to its end, within the grace period
