"""The upgrade: session loaded by the session middleware, Origin rule, 4401 (protocol.md, "Handshake")."""

import time

import aiohttp
import pytest
from cryptography.fernet import Fernet, InvalidToken

from server.sessions import RememberingFernet
from tests.helpers import Browser, call, expect_close, expect_event


async def test_first_frame_is_connected_with_the_public_user(alice):
    ws = await alice.open()
    first = await expect_event(ws, "connected")
    assert first["user"] == {"id": 1, "name": "alice"}
    assert isinstance(first["socket"], str) and first["socket"]


async def test_no_session_is_accepted_then_closed_with_4401(browser):
    ws = await browser.open()
    reason = await expect_close(ws, 4401)
    assert reason == "login required"


async def test_logged_out_session_gets_4401(alice):
    await alice.call("POST", "/api/logout")
    await expect_close(await alice.open(), 4401)


async def test_tampered_cookie_is_no_session(alice, base_url):
    name, value = next((c.key, c.value) for c in alice.http.cookie_jar)
    tampered = value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB")
    async with Browser(base_url) as other:
        ws = await other.open(headers={"Cookie": f"{name}={tampered}"})
        await expect_close(ws, 4401)


@pytest.mark.parametrize("storage", ["cookie"])  # Redis forgets an expired key by itself
async def test_expired_cookie_is_no_session(serve, settings):
    base_url = await serve(settings)
    key = Fernet(settings.session_key)
    async with Browser(base_url) as b:
        await b.login()
        name, value = next((c.key, c.value) for c in b.http.cookie_jar)
        # The same session data, sealed two days ago: only its age is wrong.
        old = key.encrypt_at_time(key.decrypt(value.encode()), int(time.time()) - 2 * 86400).decode()
        b.http.cookie_jar.clear()
        ws = await b.open(headers={"Cookie": f"{name}={old}"})
        await expect_close(ws, 4401)


@pytest.mark.parametrize("storage", ["cookie"])  # Redis sessions are not sealed by a key
async def test_a_cookie_from_another_key_is_no_session(alice, serve, settings):
    other_url = await serve(settings, session_key=Fernet.generate_key().decode())
    async with Browser(other_url) as b:
        ws = await b.open(headers={"Cookie": alice.cookie()})
        await expect_close(ws, 4401)


async def test_foreign_origin_is_refused_with_403_before_the_upgrade(alice):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await alice.open(headers={"Origin": "http://evil.example"})
    assert info.value.status == 403


async def test_own_origin_is_allowed(alice, base_url):
    ws = await alice.connect(headers={"Origin": base_url.rstrip("/")})
    assert ws.connected["user"]["name"] == "alice"


async def test_no_origin_is_allowed(alice):
    ws = await alice.connect()
    assert await call(ws, "echo", 1) == 1


async def test_configured_origin_is_allowed_and_others_are_not(serve, settings):
    base_url = await serve(settings, allowed_origins=("http://app.example:3000",))
    async with Browser(base_url) as b:
        await b.login()
        ws = await b.connect(headers={"Origin": "http://app.example:3000"})
        assert ws.connected["user"]["name"] == "alice"
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await b.open(headers={"Origin": "http://app.example:3001"})
        assert info.value.status == 403


async def test_plain_http_get_on_ws_is_a_json_400(browser):
    status, body = await browser.call("GET", "/ws")
    assert status == 400
    assert body["error"]["code"] == "bad_request"


def test_a_remembered_cookie_is_still_refused_once_expired():
    """The decrypted-cookie memory never outlives the cookie's max age."""
    fernet = Fernet(Fernet.generate_key())
    remembering = RememberingFernet(fernet)
    token = fernet.encrypt_at_time(b'{"session": {}}', int(time.time()) - 100)
    assert remembering.decrypt(token, ttl=200) == b'{"session": {}}'
    assert remembering.decrypt(token.decode(), ttl=200) == b'{"session": {}}'  # remembered
    with pytest.raises(InvalidToken):
        remembering.decrypt(token, ttl=50)
    with pytest.raises(InvalidToken):
        remembering.decrypt(token[:-2] + b"AA", ttl=200)  # tampered: never remembered
