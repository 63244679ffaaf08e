"""A client that stops reading is closed with 4408 and holds up nobody else: two real
`python run.py --redis` processes, so room messages also cross the Redis backplane."""

import asyncio
import json
import statistics
import time

from tests.helpers import Browser, RunPy, call, receive_json

SEND_LIMIT = 256 * 1024
TEXT = "x" * 2000  # the longest chat message the demo takes
MESSAGES = 6000  # 12 MB in all: far more than the send limit and the kernel's buffers
WINDOW = 50  # messages in flight at once


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


async def test_a_client_that_does_not_read_is_closed_with_4408(redis_server):
    # No read budget: alice's flood (12 MB in a few seconds) is what pushes the stuck client.
    env = {"SEND_LIMIT": str(SEND_LIMIT), "RATE_LIMIT": "0", "RATE_LIMIT_BYTES": "0"}
    async with RunPy("--redis", redis_server.url, env=env) as a, RunPy("--redis", redis_server.url, env=env) as b:
        async with Browser(a.url) as stuck_user, Browser(a.url) as alice, Browser(b.url) as bob:
            await stuck_user.login("bob")
            await alice.login("alice")
            await bob.login("bob")
            stuck, on_a, on_b = await stuck_user.connect(), await alice.connect(), await bob.connect()
            for ws in (stuck, on_a, on_b):
                await call(ws, "join", {"room": "lobby"})
            before = rss_mb(a.process.pid)

            sent: dict[int, float] = {}
            delays: dict[str, list[float]] = {"same process": [], "other process": []}

            async def read(ws, where: str) -> None:
                while len(delays[where]) < MESSAGES:
                    frame = await receive_json(ws)
                    if frame.get("event") == "chat":
                        delays[where].append(time.monotonic() - sent[int(frame["data"]["text"][:8])])

            readers = [asyncio.create_task(read(on_a, "same process")), asyncio.create_task(read(on_b, "other process"))]
            for start in range(0, MESSAGES, WINDOW):  # alice talks; `stuck` reads nothing
                for n in range(start, start + WINDOW):
                    sent[n] = time.monotonic()
                    await on_a.send_str(json.dumps({"event": "chat", "data": {"room": "lobby", "text": f"{n:08d}" + TEXT[8:]}}))
                while len(delays["same process"]) < start + WINDOW:
                    await asyncio.sleep(0.001)
            await asyncio.wait_for(asyncio.gather(*readers), 30)
            grown = rss_mb(a.process.pid) - before

            # Every message reached both readers, promptly, while `stuck` read nothing.
            for where, got in delays.items():
                assert len(got) == MESSAGES, where
                p99 = statistics.quantiles(got, n=100)[98]
                # A broadcast held up by the stuck socket stalls everyone for seconds.
                assert p99 < 0.25, f"{where}: p99 {p99 * 1000:.0f} ms, max {max(got) * 1000:.0f} ms"
            assert grown < 8, f"the server grew by {grown:.1f} MB for a client that does not read"
            # Now `stuck` reads: what made it into the buffers, then the close frame.
            received = 0
            while True:
                msg = await stuck.receive(timeout=5)
                if msg.type.name != "TEXT":
                    break
                received += 1
            assert msg.type.name == "CLOSE" and msg.data == 4408
            # Some chats (what the kernel's socket buffers held, a few MB on loopback), not all.
            assert received < MESSAGES
