"""Missed-message recovery: room events carry positions, and a rejoin with `since` replays
what a socket missed (protocol.md, "Recovery"). Real processes and a real redis-server."""

import asyncio
import json
import signal
from typing import Any

import aiohttp
import pytest

from tests.conftest import RedisServer
from tests.helpers import Browser, FreezableProxy, RunPy, ask, call, receive_json, until

FAST = {"RATE_LIMIT": "2000", "INSTANCE_TTL": "1"}


@pytest.fixture
async def pair(redis_server):
    env = {**FAST, "HISTORY_SIZE": "1000"}  # more than the race below can send
    async with RunPy("--redis", redis_server.url, env=env) as a, RunPy("--redis", redis_server.url, env=env) as b:
        yield a, b


_ids = iter(range(10_000, 1 << 30))


async def join(ws: aiohttp.ClientWebSocketResponse, room: str, since: dict[str, Any] | None = None
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Join `room`; returns the frames that came before the ack, and the ack's data."""
    id = next(_ids)
    data: dict[str, Any] = {"room": room}
    if since is not None:
        data["since"] = since
    await ws.send_str(json.dumps({"event": "join", "data": data, "id": id}))
    before = []
    while True:
        frame = await receive_json(ws)
        if frame.get("ack") == id:
            assert "error" not in frame, frame
            return before, frame["data"]
        before.append(frame)


async def chats(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    """The next `count` chat frames (whole frames: with their room, offset and epoch)."""
    got = []
    while len(got) < count:
        frame = await receive_json(ws)
        if frame.get("event") == "chat":
            got.append(frame)
    return got


async def say(ws: aiohttp.ClientWebSocketResponse, *texts: str, room: str = "lobby") -> None:
    for text in texts:
        await call(ws, "chat", {"room": room, "text": text})


async def nothing_more(ws: aiohttp.ClientWebSocketResponse) -> None:
    """No frame is waiting: an echo's ack is the next thing the socket gets."""
    id = next(_ids)
    await ws.send_str(json.dumps({"event": "echo", "data": "end", "id": id}))
    assert await receive_json(ws) == {"ack": id, "data": "end"}


def without_members(ack: dict[str, Any]) -> dict[str, Any]:
    # A room's size counts a closed or killed process's sockets for a moment longer.
    return {key: value for key, value in ack.items() if key != "members"}


def texts(frames: list[dict[str, Any]]) -> list[str]:
    return [frame["data"]["text"] for frame in frames]


@pytest.mark.parametrize("cut", ["proxy", "kill"])
async def test_a_socket_cut_off_catches_up_on_the_other_process(pair, cut):
    a, b = pair
    async with Browser(a.url) as alice, Browser(b.url) as bob, FreezableProxy(a.port) as proxy:
        await alice.login("alice")
        await bob.login("bob")
        via = f"http://127.0.0.1:{proxy.port}" if cut == "proxy" else a.url
        on_a, on_b = await alice.connect(url=via), await bob.connect()
        _, joined = await join(on_a, "lobby")
        await join(on_b, "lobby")
        await say(on_b, "before")
        [seen] = await chats(on_a, 1)
        assert (seen["room"], seen["offset"], seen["epoch"]) == ("lobby", joined["offset"] + 1, joined["epoch"])

        if cut == "proxy":
            proxy.freeze()  # alice's network stops: what bob says now does not reach her
        else:
            await a.stop(signal.SIGKILL)  # alice's process dies under her
        missed = [f"missed {n}" for n in range(50)]
        await say(on_b, *missed)
        if cut == "proxy":
            proxy.cut()

        # Her page reconnects, to the other process, and rejoins from the last chat it has.
        again = await alice.connect(url=b.url)
        replayed, ack = await join(again, "lobby", since={"epoch": seen["epoch"], "offset": seen["offset"]})
        assert texts(replayed) == missed
        assert [f["offset"] for f in replayed] == list(range(seen["offset"] + 1, seen["offset"] + 51))
        assert {f["epoch"] for f in replayed} == {seen["epoch"]}
        assert without_members(ack) == {"room": "lobby", "epoch": seen["epoch"], "offset": seen["offset"] + 50,
                                        "recovered": True}

        await say(on_b, "after 1", "after 2")
        live = await chats(again, 2)
        assert texts(live) == ["after 1", "after 2"]
        assert [f["offset"] for f in live] == [ack["offset"] + 1, ack["offset"] + 2]
        await nothing_more(again)


async def test_nothing_is_doubled_or_skipped_while_a_rejoin_races_the_live_stream(pair):
    a, b = pair
    async with Browser(a.url) as alice, Browser(b.url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        first, on_b = await alice.connect(), await bob.connect()
        _, joined = await join(first, "lobby")
        await join(on_b, "lobby")
        await first.close()

        sent = 0

        async def talk() -> None:  # bob chats without pause, on the other process
            nonlocal sent
            for n in range(300):
                await say(on_b, f"race {n}")
                sent += 1

        async def chatted() -> bool:
            return sent >= 60

        talking = asyncio.create_task(talk())
        await until(chatted, "bob is chatting")
        again = await alice.connect()  # on A, whose subscription to the room may be gone
        replayed, ack = await join(again, "lobby", since={"epoch": joined["epoch"], "offset": joined["offset"]})
        assert ack["recovered"] is True and len(replayed) >= 60
        live = await chats(again, 300 - len(replayed))
        await talking
        offsets = [f["offset"] for f in replayed + live]
        assert offsets == list(range(joined["offset"] + 1, joined["offset"] + 301))
        assert texts(replayed + live) == [f"race {n}" for n in range(300)]
        await nothing_more(again)


@pytest.mark.parametrize("storage", ["cookie", "redis"])
async def test_a_history_that_no_longer_reaches_back_answers_not_recovered(redis_server, tmp_path, storage):
    args = ["--redis", redis_server.url] if storage == "redis" else []
    env = {**FAST, "HISTORY_SIZE": "10", "SESSION_KEY_FILE": str(tmp_path / "key")}
    async with RunPy(*args, env=env) as server, Browser(server.url) as alice, Browser(server.url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        first, on_bob = await alice.connect(), await bob.connect()
        _, joined = await join(first, "lobby")
        await join(on_bob, "lobby")
        await first.close()
        await say(on_bob, *[f"m{n}" for n in range(11)])  # one more than the history holds

        again = await alice.connect()
        since = {"epoch": joined["epoch"], "offset": joined["offset"]}
        replayed, ack = await join(again, "lobby", since=since)
        assert replayed == []  # nothing: a part would look whole
        assert without_members(ack) == {"room": "lobby", "epoch": joined["epoch"], "offset": joined["offset"] + 11,
                                        "recovered": False}
        # The last 10 are still there for a socket that had the first one.
        third = await alice.connect()
        replayed, ack = await join(third, "lobby", since={**since, "offset": joined["offset"] + 1})
        assert texts(replayed) == [f"m{n}" for n in range(1, 11)] and ack["recovered"] is True
        # A position of another epoch, or ahead of the room, is not recovered either.
        for wrong in ({**since, "epoch": "0.0"}, {**since, "offset": joined["offset"] + 12}):
            replayed, ack = await join(await alice.connect(), "lobby", since=wrong)
            assert (replayed, ack["recovered"]) == ([], False)


async def test_events_older_than_the_history_ttl_are_not_replayed(redis_server):
    async with RunPy("--redis", redis_server.url, env={**FAST, "HISTORY_TTL": "0.5"}) as server, \
            Browser(server.url) as alice:
        await alice.login("alice")
        first = await alice.connect()
        _, joined = await join(first, "lobby")
        await say(first, "soon stale")  # its ack says it was kept
        await asyncio.sleep(0.7)  # the history's time limit is what is tested: it must pass
        replayed, ack = await join(await alice.connect(), "lobby",
                                   since={"epoch": joined["epoch"], "offset": joined["offset"]})
        assert (replayed, ack["recovered"], ack["offset"]) == ([], False, joined["offset"] + 1)


async def test_a_redis_restart_that_lost_the_history_changes_the_epoch(tmp_path):
    redis = RedisServer(tmp_path, persist=False)
    redis.start()
    try:
        async with RunPy("--redis", redis.url, env=FAST) as server, Browser(server.url) as alice, \
                Browser(server.url) as bob:
            await alice.login("alice")
            await bob.login("bob")
            first = await alice.connect()
            _, joined = await join(first, "lobby")
            await say(first, "one", "two")
            await first.close()

            redis.stop()
            redis.start()  # empty: no sessions, no history
            await until(lambda: _healthy(server.url), "the server is back on Redis")
            await alice.login("alice")
            await bob.login("bob")

            again, on_bob = await alice.connect(), await bob.connect()
            replayed, ack = await join(again, "lobby", since={"epoch": joined["epoch"], "offset": joined["offset"] + 2})
            assert replayed == [] and ack["recovered"] is False
            assert ack["epoch"] != joined["epoch"] and ack["offset"] == 0
            # A member that stayed sees the new epoch on the next event: a gap it can tell.
            await join(on_bob, "lobby")
            await say(on_bob, "new era")
            [frame] = await chats(again, 1)
            assert (frame["epoch"], frame["offset"]) == (ack["epoch"], 1)
    finally:
        redis.stop()


async def _healthy(url: str) -> bool:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(url.rstrip("/") + "/healthz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False


async def test_a_member_rejoining_after_a_gap_gets_the_missing_events(serve, settings):
    # In one process (cookie storage: the history is in memory) a gap cannot happen on its
    # own; a client that saw one (say its own bug) asks again with `since`, as a member.
    url = await serve(settings)
    async with Browser(url) as alice:
        await alice.login("alice")
        ws, speaker = await alice.connect(), await alice.connect()
        _, joined = await join(ws, "lobby")
        await join(speaker, "lobby")
        await say(speaker, "a", "b", "c")
        await chats(ws, 3)
        replayed, ack = await join(ws, "lobby", since={"epoch": joined["epoch"], "offset": joined["offset"] + 1})
        assert texts(replayed) == ["b", "c"]
        assert ack["recovered"] is True and ack["offset"] == joined["offset"] + 3 and ack["members"] == 2


@pytest.mark.parametrize("since", [5, "x", {"epoch": 1, "offset": 0}, {"epoch": "e", "offset": -1},
                                   {"epoch": "e", "offset": 1.5}, {"epoch": "e"}, {"epoch": "e" * 65, "offset": 0}])
async def test_a_malformed_since_is_invalid_data(serve, settings, since):
    url = await serve(settings)
    async with Browser(url) as alice:
        await alice.login("alice")
        ws = await alice.connect()
        answer = await ask(ws, "join", {"room": "lobby", "since": since})
        assert answer["error"]["code"] == "invalid_data"
        assert "since" in answer["error"]["message"]
        assert (await call(ws, "whoami"))["rooms"] == []  # not joined


async def test_with_history_off_events_carry_no_position_and_nothing_is_recovered(serve, settings):
    url = await serve(settings, history_size=0)
    async with Browser(url) as alice:
        await alice.login("alice")
        ws, speaker = await alice.connect(), await alice.connect()
        _, joined = await join(ws, "lobby")
        assert joined == {"room": "lobby", "members": 1}
        await join(speaker, "lobby")
        await say(speaker, "plain")
        [frame] = await chats(ws, 1)
        assert set(frame) == {"event", "data"}
        _, again = await join(ws, "lobby", since={"epoch": "e", "offset": 0})
        assert again == {"room": "lobby", "members": 2, "recovered": False}
