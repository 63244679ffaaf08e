"""client.js in a real headless Chromium: server events never reach the client's own notifications."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet
from playwright.async_api import Page, expect

from server.app import HUB, make_app
from server.config import Settings

# Server events named like the client's own notifications, with data that would mislead a
# page that took them for those: a closed state, another user, an ended session.
LOOKALIKES = {
    "state": {"state": "closed", "lastClose": {"code": 4001, "reason": "fake", "meaning": "a fake close"}},
    "connected": {"socket": "not-this-socket", "user": {"id": 99, "name": "mallory"}},
    "session-ended": {"code": 4001, "reason": "fake", "meaning": "a fake end"},
}


@pytest.fixture
async def base_url(aiohttp_server: Any) -> str:
    """The demo app (cookie storage), plus `poke`: emits the look-alikes to the asking socket."""
    app = make_app(Settings(session_key=Fernet.generate_key().decode(), heartbeat=0, session_check_interval=60))

    @app[HUB].on("poke")
    async def poke(socket: Any, data: Any) -> str:
        for event, payload in LOOKALIKES.items():
            await socket.emit(event, payload)
        return "poked"  # the ack comes after the emits (protocol.md, "Ordering")

    server = await aiohttp_server(app)
    return str(server.make_url("/"))


async def probe_state(page: Page, state: str) -> None:
    """Wait until the page's probe client is in `state`. (Not wait_for_function: it compiles
    its predicate in the page, which the page's CSP forbids.)"""
    await page.evaluate("""(state) => new Promise((resolve) => {
        if (probe.state === state) resolve();
        probe.onState((change) => { if (change.state === state) resolve(); });
    })""", state)


async def logged_in_page(chromium: Any, base_url: str) -> Page:
    page = await (await chromium.new_context()).new_page()
    await page.goto(base_url)
    await page.fill("#username", "alice")
    await page.fill("#password", "wonderland")
    await page.click("#login-form button")
    await expect(page.locator("#status")).to_have_text("Connected")
    return page


async def test_the_demo_page_ignores_server_events_named_like_client_notifications(chromium, base_url):
    page = await logged_in_page(chromium, base_url)
    socket_id = await page.evaluate("demo.socketId")
    assert await page.evaluate("demo.request('poke')") == "poked"
    await expect(page.locator("#status")).to_have_text("Connected")
    await expect(page.locator("#close-info")).to_have_text("")
    await expect(page.locator("#user")).to_have_text("alice")
    await expect(page.locator("#app-section")).to_be_visible()
    await expect(page.locator("#login-form")).to_be_hidden()
    # A later `connected` frame is an event, not a second handshake.
    assert await page.evaluate("[demo.state, demo.socketId, demo.user]") == [
        "connected", socket_id, {"id": 1, "name": "alice"}]


async def test_server_events_and_client_notifications_reach_only_their_own_listeners(chromium, base_url):
    page = await logged_in_page(chromium, base_url)
    await page.evaluate("""async () => {
        const {Client} = await import("/static/client.js");
        const probe = new Client("/ws");
        window.probe = probe;
        window.heard = {server: [], client: []};
        for (const name of ["state", "connected", "session-ended"]) {
          probe.on(name, (data) => heard.server.push([name, data]));
        }
        probe.onState(({state}) => heard.client.push(["state", state]));
        probe.onConnected(({user}) => heard.client.push(["connected", user.name]));
        probe.onSessionEnded(({code}) => heard.client.push(["session-ended", code]));
        probe.connect();
    }""")
    await probe_state(page, "connected")
    assert await page.evaluate("probe.request('poke')") == "poked"
    # Logging out closes the probe's socket with 4001: the client's own session-ended.
    assert await page.evaluate("fetch('/api/logout', {method: 'POST'}).then((r) => r.status)") == 200
    await probe_state(page, "closed")
    heard = await page.evaluate("heard")
    assert heard["server"] == [[name, data] for name, data in LOOKALIKES.items()]
    assert heard["client"] == [["state", "connecting"], ["state", "connected"], ["connected", "alice"],
                               ["state", "closed"], ["session-ended", 4001]]
