"""Every bad input gets a clear error, loses nothing, and never affects another connection."""

import asyncio
import json
import time

import aiohttp

from tests.helpers import Browser, ask, ask_many, call, expect_ack, expect_close, expect_event, receive_json


async def expect_event_frame(ws, name: str) -> dict:
    while True:
        frame = await receive_json(ws)
        if frame.get("event") == name:
            return frame


async def receive_json_or_close(ws) -> dict | None:
    msg = await asyncio.wait_for(ws.receive(), 5)
    return json.loads(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else None


async def errors_then_echo(ws, sent):
    """Send `sent`, expect an `error` event, then prove the socket still works."""
    await ws.send_str(sent)
    error = await expect_event(ws, "error")
    assert await call(ws, "echo", "still here") == "still here"
    return error


async def test_malformed_json(alice):
    ws = await alice.connect()
    error = await errors_then_echo(ws, '{"event": "echo", ')
    assert error == {"code": "bad_frame", "message": "frame is not valid JSON"}


async def test_hostile_json_is_bad_frame_and_the_socket_stays_open(alice, caplog):
    ws = await alice.connect()
    hostile = [
        '{"event": "echo", "data": ' + "[" * 5000 + "]" * 5000 + ', "id": 1}',  # nested too deeply
        '{"event": "echo", "data": [1e400, ' + "9" * 100 + '], "id": 2}',  # a float out of range
        '{"event": "echo", "data": ' + "9" * 5000 + ', "id": 3}',  # an integer too long to read
    ]
    for frame in hostile:
        assert (await errors_then_echo(ws, frame))["code"] == "bad_frame"
    assert "Traceback" not in caplog.text
    assert await call(ws, "echo", [2**70, 1e300]) == [2**70, 1e300]  # large but exact numbers still work


async def test_frame_that_is_not_an_object(alice):
    ws = await alice.connect()
    assert (await errors_then_echo(ws, "[1, 2]"))["code"] == "bad_frame"


async def test_wrong_field_types_without_id(alice):
    ws = await alice.connect()
    assert (await errors_then_echo(ws, '{"event": ["echo"]}'))["code"] == "bad_frame"


async def test_invalid_event_name_with_id_gets_an_error_ack(alice):
    ws = await alice.connect()
    await ws.send_str('{"event": "no spaces allowed", "id": 41}')
    ack = await expect_ack(ws, 41)
    assert ack["error"]["code"] == "bad_frame"
    assert await call(ws, "echo", 1) == 1


async def test_invalid_id_is_bad_frame_and_the_event_is_not_run(alice):
    ws = await alice.connect()
    await ws.send_str('{"event": "join", "data": {"room": "lobby"}, "id": "7"}')
    assert (await expect_event(ws, "error"))["code"] == "bad_frame"
    assert (await call(ws, "whoami"))["rooms"] == []  # the join did not run


async def test_unknown_event_with_and_without_id(alice):
    ws = await alice.connect()
    ack = await ask(ws, "no_such_event")
    assert ack["error"] == {"code": "unknown_event", "message": "no handler for event 'no_such_event'"}
    assert (await errors_then_echo(ws, '{"event": "no_such_event"}'))["code"] == "unknown_event"


async def test_invalid_data(alice):
    ws = await alice.connect()
    ack = await ask(ws, "join", {"room": "Not Valid!"})
    assert ack["error"]["code"] == "invalid_data"
    ack = await ask(ws, "join", "lobby")
    assert ack["error"]["code"] == "invalid_data"


async def test_binary_frame(alice):
    ws = await alice.connect()
    await ws.send_bytes(b'{"event": "echo"}')
    error = await expect_event(ws, "error")
    assert error["code"] == "bad_frame" and "binary" in error["message"]
    assert await call(ws, "echo", 2) == 2


async def test_ack_for_no_pending_request(alice):
    ws = await alice.connect()
    assert (await errors_then_echo(ws, '{"ack": 99, "data": 1}'))["code"] == "bad_frame"


async def test_oversize_frame_closes_1009_and_only_that_socket(serve, settings, make_browser):
    base_url = await serve(settings, max_message_size=1000)
    async with Browser(base_url) as a, Browser(base_url) as b:
        await a.login("alice")
        await b.login("bob")
        big, small = await a.connect(), await b.connect()
        same_user = await a.connect()
        # Exactly the limit is accepted...
        payload = json.dumps({"event": "echo", "id": 1, "data": ""})
        at_limit = payload.replace('""', '"' + "x" * (1000 - len(payload)) + '"')
        assert len(at_limit.encode()) == 1000
        await big.send_str(at_limit)
        assert (await expect_ack(big, 1))["data"] == "x" * (1000 - len(payload))
        # ...one byte more is not.
        await big.send_str(at_limit.replace('"x', '"xx'))
        await expect_close(big, 1009)
        assert await call(small, "echo", "fine") == "fine"
        assert await call(same_user, "echo", "fine") == "fine"


async def test_handler_that_raises_gives_internal_without_traceback(serve, settings, caplog):
    def setup(hub):
        @hub.on("explode")
        async def explode(socket, data):
            raise RuntimeError("secret detail from the server")

    base_url = await serve(settings, setup=setup)
    async with Browser(base_url) as a, Browser(base_url) as b:
        await a.login("alice")
        await b.login("bob")
        ws, other = await a.connect(), await b.connect()
        ack = await ask(ws, "explode")
        assert ack["error"]["code"] == "internal"
        assert "secret" not in json.dumps(ack) and "Traceback" not in json.dumps(ack)
        await ws.send_str('{"event": "explode"}')
        error = await expect_event(ws, "error")
        assert error["code"] == "internal" and "secret" not in error["message"]
        assert await call(ws, "echo", "alive") == "alive"
        assert await call(other, "echo", "alive") == "alive"
    assert "secret detail from the server" in caplog.text  # the server log has the traceback
    assert "Traceback" in caplog.text


async def test_a_flood_is_read_at_the_rate_limit_and_nothing_is_refused(serve, settings):
    base_url = await serve(settings, rate_limit=20)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.connect()
        started = time.monotonic()
        for id in range(1, 81):
            await ws.send_str(json.dumps({"event": "echo", "data": id, "id": id}))
        acks = [await receive_json(ws) for _ in range(80)]
        # Every event answered, in order, none refused: the server only read them more slowly.
        assert [(a["ack"], a["data"]) for a in acks] == [(id, id) for id in range(1, 81)]
        assert time.monotonic() - started >= (80 - 2 * 20 - 1) / 20  # the burst, then 20 a second


async def test_a_users_sockets_share_one_budget(serve, settings):
    base_url = await serve(settings, rate_limit=10)  # per socket; the user's sockets share 4x
    async with Browser(base_url) as b:
        await b.login()
        sockets = [await b.connect() for _ in range(8)]
        started = time.monotonic()
        await asyncio.gather(*(ask_many(ws, "echo", 20) for ws in sockets))
        # 160 events: alone, each socket would be done within its burst of 20; together they
        # share a burst of 80 and 40 a second.
        assert time.monotonic() - started >= (160 - 80 - 5) / 40


async def test_reconnecting_does_not_refill_a_users_budget(serve, settings):
    base_url = await serve(settings, rate_limit=10)  # a socket: bursts of 20; the user: 80, then 40 a second
    async with Browser(base_url) as b:
        await b.login()
        started = time.monotonic()
        for _ in range(6):  # 120 events, each socket within its own burst, one socket at a time
            ws = await b.connect()
            assert all("error" not in a for a in await ask_many(ws, "echo", 20))
            await ws.close()
        assert time.monotonic() - started >= (120 - 80 - 5) / 40


async def test_a_bytes_budget_paces_large_frames(serve, settings):
    base_url = await serve(settings, rate_limit_bytes=20_000)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.connect()
        started = time.monotonic()
        acks = await ask_many(ws, "echo", 10, data="x" * 10_000)  # 100 kB: a burst of 40 kB, then 20 kB/s
        assert all("error" not in a for a in acks)
        assert time.monotonic() - started >= (100_000 - 40_000 - 10_000) / 20_000


async def test_binary_frames_are_paced_like_text(serve, settings):
    base_url = await serve(settings, rate_limit=20)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.connect()
        started = time.monotonic()
        for _ in range(80):
            await ws.send_bytes(b"x")
        errors = [await receive_json(ws) for _ in range(80)]
        assert all(e["data"]["code"] == "bad_frame" for e in errors)
        assert time.monotonic() - started >= (80 - 2 * 20 - 1) / 20  # answered no faster than events


async def test_the_rooms_of_a_socket_are_capped(serve, settings):
    base_url = await serve(settings, max_rooms_per_socket=3)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.connect()
        for room in ("a", "b", "c"):
            await call(ws, "join", {"room": room})
        reply = await ask(ws, "join", {"room": "d"})
        assert reply["error"]["code"] == "limit_reached" and "at most 3 rooms" in reply["error"]["message"]
        assert (await call(ws, "join", {"room": "a"}))["room"] == "a"  # joining again is no new room
        await call(ws, "leave", {"room": "a"})
        assert (await call(ws, "join", {"room": "d"}))["members"] == 1


async def test_the_sockets_of_a_user_are_capped(serve, settings):
    base_url = await serve(settings, max_sockets_per_user=3)
    async with Browser(base_url) as alice, Browser(base_url) as bob:
        await alice.login("alice")
        await bob.login("bob")
        tabs = [await alice.connect() for _ in range(3)]
        assert await expect_close(await alice.open(), 4429) == "too many sockets for this user"
        assert await call(await bob.connect(), "echo", 1) == 1  # other users are not affected
        await tabs[0].close()
        async with asyncio.timeout(5):  # the server counts the close once its handler is done
            while True:
                ws = await alice.open()
                first = await receive_json_or_close(ws)
                if first is not None:
                    break
        assert first["event"] == "connected"


async def test_a_pending_server_request_is_answered_while_big_frames_pile_up(serve, settings):
    """The client's answer is read whatever waits before it; what is queued stays bounded."""
    base_url = await serve(settings, rate_limit=0, rate_limit_bytes=0)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.connect()
        await ws.send_str(json.dumps({"event": "confirm", "data": {"question": "sure?"}, "id": 1}))
        request = await expect_event_frame(ws, "confirm")
        big = "x" * 60_000  # under the 64 KiB frame limit
        for id in range(100, 130):  # 30 frames, 1.8 MB: far more than the inbox's 256 KiB
            await ws.send_str(json.dumps({"event": "echo", "data": big, "id": id}))
        await ws.send_str(json.dumps({"ack": request["id"], "data": "yes"}))
        answers: dict[int, dict] = {}
        while len(answers) < 31:
            frame = await receive_json(ws)
            answers[frame["ack"]] = frame
        assert answers[1]["data"] == {"answer": "yes"}  # not stuck behind the pile
        refused = [id for id in range(100, 130) if "error" in answers[id]]
        assert refused and all(answers[id]["error"]["code"] == "rate_limited" for id in refused)
        assert len(refused) >= 30 - 256_000 // 60_000 - 1  # only what fits in the inbox waited
        assert all(answers[id]["data"] == big for id in range(100, 130) if id not in refused)


async def test_garbage_flood_does_not_affect_another_connection(alice, make_browser):
    bob = await make_browser()
    await bob.login("bob")
    ws, other = await alice.connect(), await bob.connect()
    for _ in range(200):
        await ws.send_str("garbage")
    for _ in range(200):
        assert (await receive_json(ws))["data"]["code"] == "bad_frame"
    assert await call(other, "echo", "ok") == "ok"
    assert await call(ws, "echo", "ok") == "ok"


async def test_events_of_one_socket_are_handled_in_order(alice):
    ws = await alice.connect()
    for id in range(1, 101):
        await ws.send_str(json.dumps({"event": "echo", "data": id, "id": id}))
    assert [(await receive_json(ws))["ack"] for _ in range(100)] == list(range(1, 101))


async def test_errors_and_acks_come_back_in_the_order_sent(alice):
    """A bad frame's error never overtakes the answers of the events sent before it."""
    ws = await alice.connect()
    await call(ws, "join", {"room": "lobby"})
    for _ in range(20):
        await ws.send_str(json.dumps({"event": "chat", "data": {"room": "lobby", "text": "hi"}, "id": 7}))
        await ws.send_str("not json")
        await ws.send_bytes(b"binary")
        await ws.send_str('{"event": "nope", "id": 8}')
        await ws.send_str('{"ack": 99, "data": null}')
        got = [await receive_json(ws) for _ in range(6)]
        assert [f.get("event") or f.get("ack") for f in got] == ["chat", 7, "error", "error", 8, "error"]
        assert [f.get("data", {}).get("code") for f in got[2:4]] == ["bad_frame", "bad_frame"]
        assert got[4]["error"]["code"] == "unknown_event"
        assert got[5]["data"]["code"] == "bad_frame"


async def test_a_closed_socket_is_not_closed_by_another_message(alice):
    ws = await alice.connect()
    await ws.close()
    assert ws.closed
    fresh = await alice.connect()
    assert await call(fresh, "echo", None) is None
    assert isinstance(fresh, aiohttp.ClientWebSocketResponse)
