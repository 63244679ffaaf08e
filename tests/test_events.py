"""The demo app's socket events, rooms, emits from HTTP, and server requests."""

import asyncio
import json

import pytest

from server.errors import RequestFailed
from server.testing import Closed, TestSocket
from tests.helpers import Browser, call, expect_event, receive_json


async def nothing_received(socket: TestSocket) -> None:
    """Assert that no event has come to `socket` that no `receive` took (an ack of a later
    request on it is a mark: any event the server sent before that ack is in by then)."""
    with pytest.raises(TimeoutError):
        got = await socket.receive(timeout=0)
        pytest.fail(f"unexpected event {got}")


async def test_whoami_lists_joined_rooms_not_private_ones(alice):
    ws = await alice.socket()
    await ws.request("join", {"room": "lobby"})
    await ws.request("join", {"room": "dev-1"})
    assert await ws.request("whoami") == {"user": {"id": 1, "name": "alice"}, "rooms": ["dev-1", "lobby"]}


@pytest.mark.parametrize("value", [None, 0, "text", [1, {"a": None}], {"nested": {"x": 1.5}}])
async def test_echo_returns_the_same_value(alice, value):
    ws = await alice.socket()
    assert await ws.request("echo", value) == value


async def test_join_and_leave_count_sockets(alice, make_browser):
    bob = await make_browser()
    await bob.login("bob")
    a1, a2, b = await alice.socket(), await alice.socket(), await bob.socket()
    joined = await a1.request("join", {"room": "lobby"})
    position = {"epoch": joined["epoch"], "offset": 0}  # no event in the room yet
    assert joined == {"room": "lobby", "members": 1, **position}
    assert await a2.request("join", {"room": "lobby"}) == {"room": "lobby", "members": 2, **position}
    assert await b.request("join", {"room": "lobby"}) == {"room": "lobby", "members": 3, **position}
    assert await b.request("join", {"room": "lobby"}) == {"room": "lobby", "members": 3, **position}  # idempotent
    assert await a2.request("leave", {"room": "lobby"}) == {"room": "lobby", "members": 2}
    await a1.close()
    assert await b.request("leave", {"room": "lobby"}) == {"room": "lobby", "members": 0}


@pytest.mark.parametrize("room", ["user:1", "session:abc", "Lobby", "", "x" * 33, "a b"])
async def test_private_and_invalid_rooms_cannot_be_joined(alice, room):
    ws = await alice.socket()
    with pytest.raises(RequestFailed) as failed:
        await ws.request("join", {"room": room})
    assert failed.value.code == "invalid_data"
    assert (await ws.request("whoami"))["rooms"] == []


async def test_the_library_forbids_private_rooms(serve, settings):
    def setup(hub):
        @hub.on("raw_join")
        async def raw_join(socket, data):
            await socket.join(data)

    base_url = await serve(settings, setup=setup)
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.socket()
        for room in ("user:1", "session:x"):
            with pytest.raises(RequestFailed) as failed:
                await ws.request("raw_join", room)
            assert failed.value.code == "forbidden"


async def test_chat_reaches_every_member_sender_included(alice, make_browser):
    bob, carol = await make_browser(), await make_browser()
    await bob.login("bob")
    await carol.login("bob")
    # The sender's socket stays raw: the test client cannot tell whether an event came
    # before or after an ack, and the order is what is asserted.
    a, b, outsider = await alice.connect(), await bob.socket(), await carol.socket()
    await call(a, "join", {"room": "lobby"})
    await b.request("join", {"room": "lobby"})
    await a.send_str(json.dumps({"event": "chat", "data": {"room": "lobby", "text": "hi bob"}, "id": 1}))
    # The sender gets the message, then the ack of its chat.
    sent, ack = await receive_json(a), await receive_json(a)
    assert sent["event"] == "chat" and ack == {"ack": 1, "data": {"ok": True}}
    for message in (sent["data"], (await b.receive("chat")).data):
        assert message["room"] == "lobby" and message["text"] == "hi bob"
        assert message["from"] == {"id": 1, "name": "alice"}
        assert isinstance(message["ts"], int)
    await b.emit("chat", {"room": "lobby", "text": "hi alice"})
    assert (await expect_event(a, "chat"))["from"] == {"id": 2, "name": "bob"}
    # The socket outside the room got nothing before its own ack.
    assert await outsider.request("echo", "next") == "next"
    await nothing_received(outsider)


async def test_chat_needs_membership_and_text(alice):
    ws = await alice.socket()
    with pytest.raises(RequestFailed) as failed:
        await ws.request("chat", {"room": "lobby", "text": "hi"})
    assert failed.value.code == "forbidden"
    await ws.request("join", {"room": "lobby"})
    for bad in ({"room": "lobby", "text": ""}, {"room": "lobby", "text": 5}, {"room": "lobby"}):
        with pytest.raises(RequestFailed) as failed:
            await ws.request("chat", bad)
        assert failed.value.code == "invalid_data"


async def test_http_incr_emits_count_to_that_sessions_sockets_only(alice, make_browser):
    other_alice = await make_browser()
    await other_alice.login("alice")  # the same user, another browser session
    tab1, tab2, elsewhere = await alice.socket(), await alice.socket(), await other_alice.socket()
    status, body = await alice.call("POST", "/api/incr")
    assert (status, body) == (200, {"count": 1})
    assert (await tab1.receive("count")).data == {"count": 1}
    assert (await tab2.receive("count")).data == {"count": 1}
    assert await elsewhere.request("echo", "no count here") == "no count here"
    await nothing_received(elsewhere)


async def test_notify_reaches_every_socket_of_the_user(alice, make_browser):
    other_alice, bob = await make_browser(), await make_browser()
    await other_alice.login("alice")
    await bob.login("bob")
    a1, a2, b = await alice.socket(), await other_alice.socket(), await bob.socket()
    status, _ = await alice.call("POST", "/api/notify", {"message": "tea is ready"})
    assert status == 200
    for ws in (a1, a2):
        note = (await ws.receive("notification")).data
        assert note["message"] == "tea is ready" and isinstance(note["ts"], int)
    assert await b.request("echo", 1) == 1
    await nothing_received(b)


@pytest.mark.parametrize("storage", ["cookie"])
async def test_socket_incr_with_cookie_storage_is_refused_not_dropped(alice):
    ws = await alice.socket()
    await alice.call("POST", "/api/incr")
    with pytest.raises(RequestFailed) as failed:
        await ws.request("incr")
    assert failed.value.code == "session_read_only"
    _, body = await alice.call("POST", "/api/incr")
    assert body == {"count": 2}  # nothing was half-saved


@pytest.mark.parametrize("storage", ["redis"])
async def test_socket_incr_with_redis_sees_http_changes_and_persists(alice):
    tab1, tab2 = await alice.socket(), await alice.socket()
    await alice.call("POST", "/api/incr")
    await alice.call("POST", "/api/incr")
    assert await tab1.request("incr") == {"count": 3}  # the reload saw both HTTP increments
    # The session's other socket saw every increment, the socket's own included.
    assert [(await tab2.receive("count")).data for _ in range(3)] == [{"count": n} for n in (1, 2, 3)]
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
        ws = await b.socket()
        asked = asyncio.create_task(ws.request("ask_me", "sure?"))
        request = await ws.receive()
        assert request.event == "confirm" and request.data == {"question": "sure?"}
        assert isinstance(request.id, int) and request.id > 0
        await ws.reply(request.id, "yes")
        assert await results.get() == ("answer", "yes")
        assert await asked == "yes"

        # An error ack reaches the handler as RequestFailed.
        asked = asyncio.create_task(ws.request("ask_me", "again?"))
        request = await ws.receive()
        assert request.event == "confirm"
        await ws.reply_error(request.id, "declined", "no")
        assert await results.get() == ("failed", "declined")
        assert await asked == "failed"

        # No answer: the handler's RequestTimeout answers the client's event with `timeout`.
        asked = asyncio.create_task(ws.request("ask_me", "slow"))
        request = await ws.receive()
        assert request.event == "confirm"
        with pytest.raises(RequestFailed) as failed:
            await asked
        assert failed.value.code == "timeout"
        # A late answer is refused clearly and changes nothing.
        await ws.reply(request.id, "too late")
        assert (await ws.receive("error")).data["code"] == "bad_frame"
        assert await ws.request("echo", "ok") == "ok"


async def test_emit_from_http_to_everyone_and_to_all_but_one(serve, settings):
    def setup(hub):
        @hub.on("shout")
        async def shout(socket, data):
            await hub.emit("shout", data, skip=socket)

    base_url = await serve(settings, setup=setup)
    async with Browser(base_url) as a, Browser(base_url) as b:
        await a.login("alice")
        await b.login("bob")
        wa, wb = await a.socket(), await b.socket()
        await wa.request("shout", "to all but me")
        assert (await wb.receive("shout")).data == "to all but me"
        assert await wa.request("echo", "nothing before this") == "nothing before this"
        await nothing_received(wa)


async def test_the_demo_confirm_event_asks_the_client_and_times_out(alice):
    ws = await alice.socket()
    asked = asyncio.create_task(ws.request("confirm", {"question": "sure?"}))
    request = await ws.receive()
    assert request.event == "confirm" and request.data == {"question": "sure?"}
    await ws.reply(request.id, "yes")
    assert await asked == {"answer": "yes"}

    asked = asyncio.create_task(ws.request("confirm", {"question": "really?"}))
    request = await ws.receive()
    assert request.event == "confirm"
    await ws.reply_error(request.id, "no_thanks", "no")
    assert await asked == {"declined": "no_thanks"}

    asked = asyncio.create_task(ws.request("confirm", {"question": "hello?", "timeout": 0.2}))
    assert (await ws.receive()).event == "confirm"  # left unanswered
    with pytest.raises(RequestFailed) as failed:
        await asked
    assert failed.value.code == "timeout"
    for bad in ({"question": ""}, {"question": "q", "timeout": 0}, {"question": "q", "timeout": 61}, None):
        with pytest.raises(RequestFailed) as failed:
            await ws.request("confirm", bad)
        assert failed.value.code == "invalid_data"
    assert await ws.request("echo", "still open") == "still open"


async def test_the_demo_fail_event_answers_internal_without_details(alice, caplog):
    ws = await alice.socket()
    with pytest.raises(RequestFailed) as failed:
        await ws.request("fail")
    assert (failed.value.code, failed.value.message) == ("internal", "the server failed to handle this event")
    assert "raises on purpose" in caplog.text  # the traceback is in the server log
    assert await ws.request("echo", "still open") == "still open"


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
    ws = await alice.socket()
    asked = asyncio.create_task(ws.request("confirm", {"question": "sure?", "timeout": 30}))
    assert (await ws.receive()).event == "confirm"
    started = asyncio.get_running_loop().time()
    await alice.call("POST", "/api/logout")
    assert await ws.wait_closed() == 4001
    assert asyncio.get_running_loop().time() - started < 2  # not after the handler's 30 s
    with pytest.raises(Closed) as closed:  # the waiting event was never answered
        await asked
    assert closed.value.code == 4001
