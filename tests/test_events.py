"""The demo app's socket events, rooms, emits from HTTP, and server requests."""

import asyncio
import json

import pytest

from server.errors import RequestFailed
from tests.helpers import Browser, ask, call, expect_close, expect_event, receive_json


async def test_whoami_lists_joined_rooms_not_private_ones(alice):
    ws = await alice.connect()
    await call(ws, "join", {"room": "lobby"})
    await call(ws, "join", {"room": "dev-1"})
    assert await call(ws, "whoami") == {"user": {"id": 1, "name": "alice"}, "rooms": ["dev-1", "lobby"]}


@pytest.mark.parametrize("value", [None, 0, "text", [1, {"a": None}], {"nested": {"x": 1.5}}])
async def test_echo_returns_the_same_value(alice, value):
    ws = await alice.connect()
    assert await call(ws, "echo", value) == value


async def test_join_and_leave_count_sockets(alice, make_browser):
    bob = await make_browser()
    await bob.login("bob")
    a1, a2, b = await alice.connect(), await alice.connect(), await bob.connect()
    assert await call(a1, "join", {"room": "lobby"}) == {"room": "lobby", "members": 1}
    assert await call(a2, "join", {"room": "lobby"}) == {"room": "lobby", "members": 2}
    assert await call(b, "join", {"room": "lobby"}) == {"room": "lobby", "members": 3}
    assert await call(b, "join", {"room": "lobby"}) == {"room": "lobby", "members": 3}  # idempotent
    assert await call(a2, "leave", {"room": "lobby"}) == {"room": "lobby", "members": 2}
    await a1.close()
    assert await call(b, "leave", {"room": "lobby"}) == {"room": "lobby", "members": 0}


@pytest.mark.parametrize("room", ["user:1", "session:abc", "Lobby", "", "x" * 33, "a b"])
async def test_private_and_invalid_rooms_cannot_be_joined(alice, room):
    ws = await alice.connect()
    ack = await ask(ws, "join", {"room": room})
    assert ack["error"]["code"] == "invalid_data"
    assert (await call(ws, "whoami"))["rooms"] == []


async def test_the_library_forbids_private_rooms(serve, settings):
    def setup(hub):
        @hub.on("raw_join")
        async def raw_join(socket, data):
            await socket.join(data)

    base_url = await serve(settings, setup=setup)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.connect()
        for room in ("user:1", "session:x"):
            assert (await ask(ws, "raw_join", room))["error"]["code"] == "forbidden"


async def test_chat_reaches_every_member_sender_included(alice, make_browser):
    bob, carol = await make_browser(), await make_browser()
    await bob.login("bob")
    await carol.login("bob")
    a, b, outsider = await alice.connect(), await bob.connect(), await carol.connect()
    await call(a, "join", {"room": "lobby"})
    await call(b, "join", {"room": "lobby"})
    await a.send_str(json.dumps({"event": "chat", "data": {"room": "lobby", "text": "hi bob"}, "id": 1}))
    # The sender gets the message, then the ack of its chat.
    sent, ack = await receive_json(a), await receive_json(a)
    assert sent["event"] == "chat" and ack == {"ack": 1, "data": {"ok": True}}
    for message in (sent["data"], await expect_event(b, "chat")):
        assert message["room"] == "lobby" and message["text"] == "hi bob"
        assert message["from"] == {"id": 1, "name": "alice"}
        assert isinstance(message["ts"], int)
    await b.send_str(json.dumps({"event": "chat", "data": {"room": "lobby", "text": "hi alice"}}))
    assert (await expect_event(a, "chat"))["from"] == {"id": 2, "name": "bob"}
    # The socket outside the room got nothing: its next frame is its own ack.
    assert await call(outsider, "echo", "next") == "next"


async def test_chat_needs_membership_and_text(alice):
    ws = await alice.connect()
    assert (await ask(ws, "chat", {"room": "lobby", "text": "hi"}))["error"]["code"] == "forbidden"
    await call(ws, "join", {"room": "lobby"})
    assert (await ask(ws, "chat", {"room": "lobby", "text": ""}))["error"]["code"] == "invalid_data"
    assert (await ask(ws, "chat", {"room": "lobby", "text": 5}))["error"]["code"] == "invalid_data"
    assert (await ask(ws, "chat", {"room": "lobby"}))["error"]["code"] == "invalid_data"


async def test_http_incr_emits_count_to_that_sessions_sockets_only(alice, make_browser):
    other_alice = await make_browser()
    await other_alice.login("alice")  # the same user, another browser session
    tab1, tab2, elsewhere = await alice.connect(), await alice.connect(), await other_alice.connect()
    status, body = await alice.call("POST", "/api/incr")
    assert (status, body) == (200, {"count": 1})
    assert await expect_event(tab1, "count") == {"count": 1}
    assert await expect_event(tab2, "count") == {"count": 1}
    assert await call(elsewhere, "echo", "no count here") == "no count here"


async def test_notify_reaches_every_socket_of_the_user(alice, make_browser):
    other_alice, bob = await make_browser(), await make_browser()
    await other_alice.login("alice")
    await bob.login("bob")
    a1, a2, b = await alice.connect(), await other_alice.connect(), await bob.connect()
    status, _ = await alice.call("POST", "/api/notify", {"message": "tea is ready"})
    assert status == 200
    for ws in (a1, a2):
        note = await expect_event(ws, "notification")
        assert note["message"] == "tea is ready" and isinstance(note["ts"], int)
    assert await call(b, "echo", 1) == 1


@pytest.mark.parametrize("storage", ["cookie"])
async def test_socket_incr_with_cookie_storage_is_refused_not_dropped(alice):
    ws = await alice.connect()
    await alice.call("POST", "/api/incr")
    ack = await ask(ws, "incr")
    assert ack["error"]["code"] == "session_read_only"
    _, body = await alice.call("POST", "/api/incr")
    assert body == {"count": 2}  # nothing was half-saved


@pytest.mark.parametrize("storage", ["redis"])
async def test_socket_incr_with_redis_sees_http_changes_and_persists(alice):
    tab1, tab2 = await alice.connect(), await alice.connect()
    await alice.call("POST", "/api/incr")
    await alice.call("POST", "/api/incr")
    assert await call(tab1, "incr") == {"count": 3}  # the reload saw both HTTP increments
    # The session's other socket saw every increment, the socket's own included.
    assert [await expect_event(tab2, "count") for _ in range(3)] == [{"count": n} for n in (1, 2, 3)]
    _, body = await alice.call("POST", "/api/incr")
    assert body == {"count": 4}  # HTTP sees what the socket saved


async def test_server_request_and_ack(serve, settings):
    results = asyncio.Queue()

    def setup(hub):
        @hub.on("ask_me")
        async def ask_me(socket, data):
            try:
                answer = await socket.request("confirm", {"question": data}, timeout=data == "slow" and 0.2 or 5)
            except RequestFailed as exc:
                await results.put(("failed", exc.code))
                return "failed"
            await results.put(("answer", answer))
            return answer

    base_url = await serve(settings, setup=setup)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.connect()
        await ws.send_str(json.dumps({"event": "ask_me", "data": "sure?", "id": 1}))
        request = await receive_json(ws)
        assert request["event"] == "confirm" and request["data"] == {"question": "sure?"}
        assert isinstance(request["id"], int) and request["id"] > 0
        await ws.send_str(json.dumps({"ack": request["id"], "data": "yes"}))
        assert await results.get() == ("answer", "yes")
        assert (await receive_json(ws)) == {"ack": 1, "data": "yes"}

        # An error ack reaches the handler as RequestFailed.
        await ws.send_str(json.dumps({"event": "ask_me", "data": "again?", "id": 2}))
        request = await receive_json(ws)
        await ws.send_str(json.dumps({"ack": request["id"], "error": {"code": "declined", "message": "no"}}))
        assert await results.get() == ("failed", "declined")
        assert (await receive_json(ws)) == {"ack": 2, "data": "failed"}

        # No answer: the handler's RequestTimeout answers the client's event with `timeout`.
        await ws.send_str(json.dumps({"event": "ask_me", "data": "slow", "id": 3}))
        request = await receive_json(ws)
        ack = await receive_json(ws)
        assert ack["ack"] == 3 and ack["error"]["code"] == "timeout"
        # A late answer is refused clearly and changes nothing.
        await ws.send_str(json.dumps({"ack": request["id"], "data": "too late"}))
        assert (await expect_event(ws, "error"))["code"] == "bad_frame"
        assert await call(ws, "echo", "ok") == "ok"


async def test_emit_from_http_to_everyone_and_to_all_but_one(serve, settings):
    def setup(hub):
        @hub.on("shout")
        async def shout(socket, data):
            await hub.emit("shout", data, skip=socket)

    base_url = await serve(settings, setup=setup)
    async with Browser(base_url) as a, Browser(base_url) as b:
        await a.login("alice")
        await b.login("bob")
        wa, wb = await a.connect(), await b.connect()
        await call(wa, "shout", "to all but me")
        assert await expect_event(wb, "shout") == "to all but me"
        assert await call(wa, "echo", "nothing before this") == "nothing before this"


async def test_the_demo_confirm_event_asks_the_client_and_times_out(alice):
    ws = await alice.connect()
    await ws.send_str(json.dumps({"event": "confirm", "data": {"question": "sure?"}, "id": 1}))
    request = await receive_json(ws)
    assert request["event"] == "confirm" and request["data"] == {"question": "sure?"}
    await ws.send_str(json.dumps({"ack": request["id"], "data": "yes"}))
    assert await receive_json(ws) == {"ack": 1, "data": {"answer": "yes"}}

    await ws.send_str(json.dumps({"event": "confirm", "data": {"question": "really?"}, "id": 2}))
    request = await receive_json(ws)
    await ws.send_str(json.dumps({"ack": request["id"], "error": {"code": "no_thanks", "message": "no"}}))
    assert await receive_json(ws) == {"ack": 2, "data": {"declined": "no_thanks"}}

    await ws.send_str(json.dumps({"event": "confirm", "data": {"question": "hello?", "timeout": 0.2}, "id": 3}))
    assert (await receive_json(ws))["event"] == "confirm"  # left unanswered
    ack = await receive_json(ws)
    assert ack["ack"] == 3 and ack["error"]["code"] == "timeout"
    for bad in ({"question": ""}, {"question": "q", "timeout": 0}, {"question": "q", "timeout": 61}, None):
        assert (await ask(ws, "confirm", bad))["error"]["code"] == "invalid_data"
    assert await call(ws, "echo", "still open") == "still open"


async def test_the_demo_fail_event_answers_internal_without_details(alice, caplog):
    ws = await alice.connect()
    ack = await ask(ws, "fail")
    assert ack["error"] == {"code": "internal", "message": "the server failed to handle this event"}
    assert "raises on purpose" in caplog.text  # the traceback is in the server log
    assert await call(ws, "echo", "still open") == "still open"


async def test_events_sent_while_a_handler_waits_for_the_client_run_after_it_in_order(alice):
    ws = await alice.connect()
    await ws.send_str(json.dumps({"event": "confirm", "data": {"question": "sure?"}, "id": 1}))
    request = await receive_json(ws)
    for id in range(2, 6):  # queued behind the waiting handler
        await ws.send_str(json.dumps({"event": "echo", "data": id, "id": id}))
    await ws.send_str("not json")
    await ws.send_str(json.dumps({"ack": request["id"], "data": "yes"}))
    assert await receive_json(ws) == {"ack": 1, "data": {"answer": "yes"}}
    assert [await receive_json(ws) for _ in range(4)] == [{"ack": id, "data": id} for id in range(2, 6)]
    assert (await receive_json(ws))["data"]["code"] == "bad_frame"
    # Reading stays with its own task from now on; everything still works, in order.
    await ws.send_str(json.dumps({"event": "confirm", "data": {"question": "again?"}, "id": 6}))
    request = await receive_json(ws)
    await ws.send_str(json.dumps({"ack": request["id"], "data": "no"}))
    assert await receive_json(ws) == {"ack": 6, "data": {"answer": "no"}}
    assert await call(ws, "echo", "ok") == "ok"


async def test_logout_closes_a_socket_whose_handler_waits_for_the_client(alice):
    ws = await alice.connect()
    await ws.send_str(json.dumps({"event": "confirm", "data": {"question": "sure?", "timeout": 30}, "id": 1}))
    assert (await receive_json(ws))["event"] == "confirm"
    started = asyncio.get_running_loop().time()
    await alice.call("POST", "/api/logout")
    await expect_close(ws, 4001)
    assert asyncio.get_running_loop().time() - started < 2  # not after the handler's 30 s
