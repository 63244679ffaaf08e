"""The demo page in a real headless Chromium (Debian's), driven by Playwright."""

import asyncio
import json
import re

import aiohttp
import pytest
from playwright.async_api import Page, expect

from tests.helpers import Browser, FreezableProxy, RunPy, call, until


@pytest.fixture
async def server(tmp_path):
    async with RunPy(env={"SESSION_KEY_FILE": str(tmp_path / "key")}) as server:
        yield server


async def open_page(context, url: str, sockets: list, sent: list | None = None) -> Page:
    """A new tab at `url`; its websockets go to `sockets`, and every frame they send to `sent`."""
    page = await context.new_page()

    def opened(ws) -> None:
        sockets.append(ws)
        if sent is not None:
            ws.on("framesent", lambda payload: sent.append(payload))

    page.on("websocket", opened)
    await page.goto(url)
    return page


async def log_in(page: Page, name: str, password: str) -> None:
    await page.fill("#username", name)
    await page.fill("#password", password)
    await page.click("#login-form button")
    await expect(page.locator("#status")).to_have_text("Connected")


async def reconnect_now(page: Page) -> str:
    """Skip the client's backoff wait (the server is back); returns the state it settles in."""
    for _ in range(100):
        # connect() on a closed client would start afresh: only hurry one that is retrying.
        state = await page.evaluate("demo.state === 'reconnecting' && demo.connect(), demo.state")
        if state in ("connected", "closed"):
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"the page did not reconnect: {state}")


def frames_with(sent: list, text: str) -> list:
    return [frame for frame in sent if text in frame]


async def test_login_then_connect_and_nothing_before(chromium, server, tmp_path):
    context = await chromium.new_context()
    sockets: list = []
    page = await open_page(context, server.url, sockets)
    await expect(page.locator("#login-form")).to_be_visible()
    assert await page.evaluate("window.demo.state") == "idle"
    assert sockets == []  # the page opened no socket before login
    await log_in(page, "alice", "wonderland")
    await expect(page.locator("#user")).to_have_text("alice")
    assert len(sockets) == 1
    await page.click("#whoami-button")
    await expect(page.locator("#whoami")).to_contain_text('"name": "alice"')
    await page.screenshot(path=str(tmp_path / "logged-in.png"), full_page=True)
    await page.set_viewport_size({"width": 375, "height": 740})
    await page.screenshot(path=str(tmp_path / "logged-in-phone.png"), full_page=True)
    # Nothing wider than a phone's screen: no sideways scrolling.
    assert await page.evaluate("document.documentElement.scrollWidth") <= 375
    # With cookie storage the socket cannot save the session, and the page says so.
    await page.click("#incr-socket")
    await expect(page.locator("#counter-error")).to_contain_text("cannot save the session with cookie storage")


async def test_two_users_chat_both_ways(chromium, server):
    alice = await open_page(await chromium.new_context(), server.url, [])
    bob = await open_page(await chromium.new_context(), server.url, [])
    await log_in(alice, "alice", "wonderland")
    await log_in(bob, "bob", "builder")
    for page in (alice, bob):
        await page.click("#join")
        await expect(page.locator("#room-info")).to_contain_text("In lobby")
    await alice.fill("#chat-text", "hello bob")
    await alice.click("#chat-form button")
    await expect(bob.locator("#messages")).to_contain_text("alice: hello bob")
    await bob.fill("#chat-text", "hi alice")
    await bob.click("#chat-form button")
    await expect(alice.locator("#messages")).to_contain_text("bob: hi alice")


async def test_counter_in_two_tabs_and_logout_closes_both(chromium, server):
    context = await chromium.new_context()
    sockets: list = []
    tab1 = await open_page(context, server.url, sockets)
    await log_in(tab1, "alice", "wonderland")
    tab2 = await open_page(context, server.url, sockets)  # same browser: already logged in
    await expect(tab2.locator("#status")).to_have_text("Connected")
    await tab1.click("#incr-http")
    await expect(tab1.locator("#counter")).to_have_text("1")
    await expect(tab2.locator("#counter")).to_have_text("1")

    opened = len(sockets)
    await tab1.click("#logout")
    for tab in (tab1, tab2):
        await expect(tab.locator("#login-form")).to_be_visible()
        await expect(tab.locator("#close-info")).to_contain_text("4001")
    await asyncio.sleep(1.5)  # longer than the first reconnect delay: would one start?
    assert len(sockets) == opened
    for tab in (tab1, tab2):
        assert await tab.evaluate("window.demo.reconnectAttempts") == 0
        assert await tab.evaluate("window.demo.state") == "closed"


async def test_the_page_reconnects_after_a_server_restart(chromium, tmp_path):
    env = {"SESSION_KEY_FILE": str(tmp_path / "key")}
    async with RunPy(env=env) as first:
        page = await open_page(await chromium.new_context(), first.url, [])
        await log_in(page, "bob", "builder")
        await page.click("#join")
        await expect(page.locator("#room-info")).to_contain_text("In lobby")
        await first.stop()
        await expect(page.locator("#close-info")).to_contain_text("1001")
        async with RunPy(env=env, port=first.port):
            await expect(page.locator("#status")).to_have_text("Connected", timeout=15000)
            await page.click("#incr-http")
            await expect(page.locator("#counter")).to_have_text("1")
            await page.click("#whoami-button")
            await expect(page.locator("#whoami")).to_contain_text('"name": "bob"')
            # The new socket was in no room; the page joined lobby again by itself.
            await expect(page.locator("#whoami")).to_contain_text('"lobby"')
            await page.fill("#chat-text", "still here")
            await page.click("#chat-form button")
            await expect(page.locator("#messages")).to_contain_text("bob: still here")
            await expect(page.locator("#chat-error")).to_have_text("")


async def test_hostile_chat_text_is_shown_not_run(chromium, server):
    page = await open_page(await chromium.new_context(), server.url, [])
    await log_in(page, "alice", "wonderland")
    await page.click("#join")
    await expect(page.locator("#room-info")).to_contain_text("In lobby")
    hostile = "<img src=x onerror=\"window.pwned=1\">"
    await page.fill("#chat-text", hostile)
    await page.click("#chat-form button")
    await expect(page.locator("#messages li")).to_have_text(re.compile(re.escape(hostile)))
    await page.fill("#notify-text", hostile)
    await page.click("#notify-form button")
    await expect(page.locator("#notifications li")).to_have_text(re.compile(re.escape(hostile)))
    assert await page.locator("#messages img, #notifications img").count() == 0
    assert await page.evaluate("window.pwned") is None


async def test_a_request_that_timed_out_while_reconnecting_is_never_sent(chromium, tmp_path):
    env = {"SESSION_KEY_FILE": str(tmp_path / "key")}
    sent: list = []
    async with RunPy(env=env) as first:
        page = await open_page(await chromium.new_context(), first.url, [], sent)
        await log_in(page, "alice", "wonderland")
        await first.stop()
        await expect(page.locator("#status")).to_have_text("Reconnecting…")
        outcome = await page.evaluate("""async () => {
            const givenUp = demo.request("echo", "given up", {timeout: 200});
            window.kept = demo.request("echo", "kept", {timeout: 30000});
            return givenUp.then(() => "answered", (error) => error.code);
        }""")
        assert outcome == "timeout"
        await asyncio.sleep(1.5)  # failed reconnect attempts (1006) come and go meanwhile
        async with RunPy(env=env, port=first.port):
            assert await reconnect_now(page) == "connected"
            # Still buffered through the failed attempts, and sent once connected.
            assert await page.evaluate("window.kept") == "kept"
            # A request after the flush: its answer means the server has read all before it.
            assert await page.evaluate("demo.request('echo', 'last')") == "last"
    assert len(frames_with(sent, '"kept"')) == 1
    assert frames_with(sent, "given up") == []


UNHANDLED = """() => {
    window.unhandled = [];
    addEventListener("unhandledrejection", (event) => unhandled.push(String(event.reason?.code ?? event.reason)));
}"""


async def test_emits_while_reconnecting_are_sent_after_it_or_rejected_when_the_buffer_is_full(chromium, tmp_path):
    env = {"SESSION_KEY_FILE": str(tmp_path / "key")}
    sent: list = []
    async with RunPy(env=env) as first:
        page = await open_page(await chromium.new_context(), first.url, [], sent)
        await log_in(page, "alice", "wonderland")
        await page.evaluate(UNHANDLED)
        assert await page.evaluate("demo.emit('echo', 'while connected')") is None  # resolved: handed over
        await first.stop()
        await expect(page.locator("#status")).to_have_text("Reconnecting…")
        outcome = await page.evaluate("""() => {
            window.buffered = [];
            for (let i = 0; i < 100; i++) buffered.push(demo.emit("echo", `buffered ${i}`));  // the demo's limit
            demo.emit("echo", "ignored and dropped");  // nobody looks: this must make no noise
            return demo.emit("echo", "one too many").then(() => "sent", (error) => error.code);
        }""")
        assert outcome == "buffer_full"
        async with RunPy(env=env, port=first.port):
            assert await reconnect_now(page) == "connected"
            await page.evaluate("Promise.all(buffered)")
            assert await page.evaluate("demo.request('echo', 'last')") == "last"
        assert await page.evaluate("window.unhandled") == []
    echoes = [json.loads(frame)["data"] for frame in sent if '"echo"' in frame]
    assert echoes == ["while connected", *(f"buffered {i}" for i in range(100)), "last"]


async def test_emits_waiting_when_the_session_ends_are_rejected(chromium, tmp_path):
    env = {"SESSION_KEY_FILE": str(tmp_path / "key")}
    sent: list = []
    context = await chromium.new_context()
    async with RunPy(env=env) as first:
        page = await open_page(context, first.url, [], sent)
        await log_in(page, "alice", "wonderland")
        await page.evaluate(UNHANDLED)
        await first.stop()
        await expect(page.locator("#status")).to_have_text("Reconnecting…")
        await page.evaluate("""() => {
            window.emitted = demo.emit("echo", "waiting emit").then(() => "sent", (error) => error.code);
            window.asked = demo.request("echo", "waiting request", {timeout: 30000}).then(() => "answered", (error) => error.code);
            demo.emit("echo", "ignored emit");  // nobody looks: this must make no noise
        }""")
        await context.clear_cookies()  # the session is gone: the next connect is closed with 4401
        async with RunPy(env=env, port=first.port):
            assert await reconnect_now(page) == "closed"
            await expect(page.locator("#login-form")).to_be_visible()
            await expect(page.locator("#close-info")).to_contain_text("4401")
            assert await page.evaluate("window.emitted") == "logged_out"
            assert await page.evaluate("window.asked") == "logged_out"
            # Sent, or dropped, after the session ended: both are refused without a socket.
            assert await page.evaluate("demo.emit('echo', 'after').catch((error) => error.code)") == "logged_out"
            await asyncio.sleep(0.3)  # unhandledrejection is reported a task later
            assert await page.evaluate("window.unhandled") == []
    assert frames_with(sent, "waiting") == [] and frames_with(sent, "ignored") == []


async def test_the_counter_is_asked_for_on_load_and_after_every_connect(chromium, server):
    # Fakes the `count` of GET /api/me, so that this tests the page, whatever the server sends.
    context = await chromium.new_context()
    await context.request.post(server.url + "api/login", data={"username": "alice", "password": "wonderland"})
    served: list[int] = []

    async def me_with_count(route) -> None:
        response = await route.fetch()
        body = await response.json()
        served.append(41 + len(served))
        await route.fulfill(response=response, json={**body, "count": served[-1]})

    await context.route("**/api/me", me_with_count)
    page = await open_page(context, server.url, [])
    await expect(page.locator("#status")).to_have_text("Connected")
    await expect(page.locator("#counter")).to_have_text("42")  # at load: 41, after `connected`: 42
    assert served == [41, 42]
    # A newer login in this browser (as in another tab): 4003, a new socket, and asked again.
    await context.request.post(server.url + "api/login", data={"username": "alice", "password": "wonderland"})
    await expect(page.locator("#close-info")).to_contain_text("4003")
    await expect(page.locator("#counter")).to_have_text("43")
    assert served == [41, 42, 43]


async def test_a_new_tab_shows_the_current_count(chromium, server):
    context = await chromium.new_context()
    tab1 = await open_page(context, server.url, [])
    await log_in(tab1, "alice", "wonderland")
    me = await (await context.request.get(server.url + "api/me")).json()
    if "count" not in me:
        pytest.skip('the server does not send "count" in GET /api/me yet')
    await tab1.click("#incr-http")
    await expect(tab1.locator("#counter")).to_have_text("1")
    await tab1.click("#incr-http")
    await expect(tab1.locator("#counter")).to_have_text("2")
    tab2 = await open_page(context, server.url, [])
    await expect(tab2.locator("#status")).to_have_text("Connected")
    await expect(tab2.locator("#counter")).to_have_text("2")


async def alice_says_things(page: Page) -> None:
    await page.click("#join")
    await expect(page.locator("#room-info")).to_contain_text("In lobby")
    await page.fill("#chat-text", "alice's secret")
    await page.click("#chat-form button")
    await page.fill("#notify-text", "alice's note")
    await page.click("#notify-form button")
    await page.click("#whoami-button")
    await expect(page.locator("#messages")).to_contain_text("alice's secret")
    await expect(page.locator("#notifications")).to_contain_text("alice's note")
    await expect(page.locator("#whoami")).to_contain_text('"name": "alice"')


async def expect_nothing_of_alice(page: Page) -> None:
    await expect(page.locator("#messages li")).to_have_count(0)
    await expect(page.locator("#notifications li")).to_have_count(0)
    await expect(page.locator("#whoami")).to_have_text("")
    await expect(page.locator("#room-info")).to_have_text("")
    text = await page.evaluate("document.body.textContent")  # hidden parts included
    assert "alice's" not in text and '"alice"' not in text


async def test_a_newer_login_as_someone_else_shows_the_new_user(chromium, server):
    context = await chromium.new_context()
    page = await open_page(context, server.url, [])
    await log_in(page, "alice", "wonderland")
    await alice_says_things(page)
    # bob logs in in another tab of this browser: this tab's socket closes with 4003 and
    # reconnects with the new cookie, as bob.
    await context.request.post(server.url + "api/login", data={"username": "bob", "password": "builder"})
    await expect(page.locator("#close-info")).to_contain_text("4003")
    await expect(page.locator("#user")).to_have_text("bob")
    await expect(page.locator("#status")).to_have_text("Connected")
    await expect_nothing_of_alice(page)
    await page.click("#whoami-button")
    await expect(page.locator("#whoami")).to_contain_text('"name": "bob"')


async def test_logout_clears_what_the_previous_user_saw(chromium, server):
    page = await open_page(await chromium.new_context(), server.url, [])
    await log_in(page, "alice", "wonderland")
    await alice_says_things(page)
    await page.click("#logout")
    await expect(page.locator("#login-form")).to_be_visible()
    await expect_nothing_of_alice(page)
    await expect(page.locator("#password")).to_have_value("")  # nor can the next person log in as alice
    await log_in(page, "bob", "builder")
    await expect(page.locator("#user")).to_have_text("bob")
    await expect_nothing_of_alice(page)


async def test_the_page_works_under_its_content_security_policy(chromium, server):
    context = await chromium.new_context()
    page = await context.new_page()
    # Record every CSP violation the page reports, from before its first script runs.
    await page.add_init_script("window.violations = []; document.addEventListener("
                               "'securitypolicyviolation', e => window.violations.push(e.violatedDirective))")
    console: list = []
    page.on("console", lambda message: console.append(message.text))
    response = await page.goto(server.url)
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    await log_in(page, "alice", "wonderland")
    await page.click("#join")
    await expect(page.locator("#room-info")).to_contain_text("In lobby")
    await page.fill("#chat-text", "under CSP")
    await page.click("#chat-form button")
    await expect(page.locator("#messages")).to_contain_text("alice: under CSP")
    await page.click("#incr-http")
    await expect(page.locator("#counter")).to_have_text("1")
    assert await page.evaluate("window.violations") == []
    assert [text for text in console if "Content Security Policy" in text] == []


async def test_a_page_that_went_offline_shows_every_message_once_when_it_is_back(chromium, server):
    # The page goes through a proxy, so its socket can be cut as a network drop cuts it
    # (Chromium's offline emulation stops new connections, not an open websocket).
    async with FreezableProxy(server.port) as proxy, Browser(server.url) as bob:
        context = await chromium.new_context()
        page = await open_page(context, f"http://127.0.0.1:{proxy.port}/", [])
        await log_in(page, "alice", "wonderland")
        await page.click("#join")
        await expect(page.locator("#room-info")).to_contain_text("In lobby")
        await bob.login("bob")
        on_bob = await bob.connect()
        await call(on_bob, "join", {"room": "lobby"})
        await call(on_bob, "chat", {"room": "lobby", "text": "line 0"})
        await expect(page.locator("#messages")).to_contain_text("bob: line 0")

        await context.set_offline(True)
        proxy.freeze()
        for n in range(1, 21):
            await call(on_bob, "chat", {"room": "lobby", "text": f"line {n}"})
        proxy.cut()
        await expect(page.locator("#status")).to_have_text("Reconnecting…")
        await context.set_offline(False)
        proxy.thaw()
        assert await reconnect_now(page) == "connected"
        await expect(page.locator("#messages")).to_contain_text("20 messages you missed")
        await call(on_bob, "chat", {"room": "lobby", "text": "line 21"})
        await expect(page.locator("#messages")).to_contain_text("bob: line 21")

        lines = await page.locator("#messages li").all_text_contents()
        chat = [line for line in lines if "bob: line" in line]
        assert chat == [f"[lobby] bob: line {n}" for n in range(22)], lines
        assert not [line for line in lines if "may be missing" in line]


async def test_a_gap_in_a_rooms_events_is_filled_by_the_client_at_once(chromium, redis_server):
    # Process A loses Redis for a moment while its sockets stay open: the chats published
    # meanwhile never reach A. The page's next chat shows a gap in the offsets, and the
    # client rejoins with `since` by itself: it shows every chat once, in order.
    async with FreezableProxy(redis_server.port) as link:
        a_redis = f"redis://127.0.0.1:{link.port}/0"
        env = {"REDIS_TIMEOUT": "0.5"}
        async with RunPy("--redis", a_redis, env=env) as a, RunPy("--redis", redis_server.url, env=env) as b, \
                Browser(b.url) as bob:
            page = await open_page(await chromium.new_context(), a.url, [])
            await log_in(page, "alice", "wonderland")
            await page.click("#join")
            await expect(page.locator("#room-info")).to_contain_text("In lobby")
            await bob.login("bob")
            on_b = await bob.connect()
            await call(on_b, "join", {"room": "lobby"})
            await call(on_b, "chat", {"room": "lobby", "text": "gap 0"})
            await expect(page.locator("#messages")).to_contain_text("bob: gap 0")

            link.freeze()
            await until(lambda: _health(a.url, 503), "A noticed that Redis is gone")
            for n in range(1, 6):
                await call(on_b, "chat", {"room": "lobby", "text": f"gap {n}"})
            link.thaw()
            await until(lambda: _health(a.url, 200), "A is back on Redis")
            await call(on_b, "chat", {"room": "lobby", "text": "gap 6"})

            await expect(page.locator("#messages")).to_contain_text("6 messages you missed")
            lines = await page.locator("#messages li").all_text_contents()
            assert [line for line in lines if "bob: gap" in line] == [f"[lobby] bob: gap {n}" for n in range(7)], lines
            assert await page.evaluate("demo.state") == "connected"  # the same socket all along


async def _health(url: str, status: int) -> bool:
    async with aiohttp.ClientSession() as http:
        async with http.get(url.rstrip("/") + "/healthz") as response:
            return response.status == status
