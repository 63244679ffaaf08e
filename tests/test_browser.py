"""The demo page in a real headless Chromium (Debian's), driven by Playwright."""

import asyncio
import re
import shutil

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.helpers import RunPy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
async def chromium():
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        await browser.close()


@pytest.fixture
async def server(tmp_path):
    async with RunPy(env={"SESSION_KEY_FILE": str(tmp_path / "key")}) as server:
        yield server


async def open_page(context, url: str, sockets: list) -> Page:
    page = await context.new_page()
    page.on("websocket", lambda ws: sockets.append(ws))
    await page.goto(url)
    return page


async def log_in(page: Page, name: str, password: str) -> None:
    await page.fill("#username", name)
    await page.fill("#password", password)
    await page.click("#login-form button")
    await expect(page.locator("#status")).to_have_text("Connected")


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
        await first.stop()
        await expect(page.locator("#close-info")).to_contain_text("1001")
        async with RunPy(env=env, port=first.port):
            await expect(page.locator("#status")).to_have_text("Connected", timeout=15000)
            await page.click("#incr-http")
            await expect(page.locator("#counter")).to_have_text("1")
            await page.click("#whoami-button")
            await expect(page.locator("#whoami")).to_contain_text('"name": "bob"')


async def test_hostile_chat_text_is_shown_not_run(chromium, server):
    page = await open_page(await chromium.new_context(), server.url, [])
    await log_in(page, "alice", "wonderland")
    await page.click("#join")
    await expect(page.locator("#room-info")).to_contain_text("In lobby")
    hostile = "<img src=x onerror=\"window.pwned=1\">"
    await page.fill("#chat-text", hostile)
    await page.click("#chat-form button")
    await expect(page.locator("#messages li")).to_have_text(re.compile(re.escape(hostile)))
    assert await page.locator("#messages img").count() == 0
    assert await page.evaluate("window.pwned") is None
