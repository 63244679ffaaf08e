"""A client that stops reading is closed with 4408 and holds up nobody else."""

import resource

import pytest

from tests.helpers import Browser, call, expect_event

BLOB = "x" * 65536
COUNT = 1000  # 64 MB: far more than the kernel's socket buffers hold


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.parametrize("storage", ["cookie"])  # no session semantics involved
async def test_a_client_that_does_not_read_is_closed_with_4408(serve, settings):
    hubs = []
    base_url = await serve(settings, send_limit=256 * 1024, setup=hubs.append)
    hub = hubs[0]
    async with Browser(base_url) as a, Browser(base_url) as b:
        await a.login("alice")
        await b.login("bob")
        stuck, reader = await a.connect(), await b.connect()
        await call(stuck, "join", {"room": "lobby"})
        await call(reader, "join", {"room": "lobby"})
        before = rss_mb()
        # The room gets 64 MB; `reader` reads each message as it comes, `stuck` reads nothing.
        for n in range(COUNT):
            await hub.emit("blob", {"n": n, "blob": BLOB}, room="lobby")
            assert (await expect_event(reader, "blob"))["n"] == n
        grown = rss_mb() - before
        assert grown < 32, f"the server kept {grown:.0f} MB for a client that does not read"
        # Now `stuck` reads: what made it into the buffers, then the close frame.
        received = 0
        while True:
            msg = await stuck.receive(timeout=5)
            if msg.type.name != "TEXT":
                break
            received += 1
        assert msg.type.name == "CLOSE" and msg.data == 4408
        assert 2 <= received < COUNT  # its join ack, some blobs: not all 64 MB
