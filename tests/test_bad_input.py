"""Every bad input gets a clear error, loses nothing, and never affects another connection."""

import json

import aiohttp

from tests.helpers import Browser, ask, call, expect_ack, expect_close, expect_event, receive_json


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


async def test_rate_limit(serve, settings):
    base_url = await serve(settings, rate_limit=5)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.connect()
        for id in range(1, 31):
            await ws.send_str(json.dumps({"event": "echo", "data": id, "id": id}))
        acks = [await receive_json(ws) for _ in range(30)]
        limited = [a for a in acks if "error" in a]
        assert limited and all(a["error"]["code"] == "rate_limited" for a in limited)
        assert len(acks) - len(limited) >= 10  # the burst went through
        # Every event got exactly one answer, in the order sent; none was lost silently.
        assert [a["ack"] for a in acks] == list(range(1, 31))


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
