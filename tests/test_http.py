"""The demo app's HTTP routes, JSON errors and CORS (protocol.md, "HTTP API")."""

import pytest

from tests.helpers import Browser


async def test_login_me_logout(browser):
    assert await browser.call("GET", "/api/me") == (401, {"error": {"code": "unauthorized", "message": "log in first"}})
    status, body = await browser.call("POST", "/api/login", {"username": "alice", "password": "wonderland"})
    assert (status, body) == (200, {"user": {"id": 1, "name": "alice"}})
    assert await browser.call("GET", "/api/me") == (200, {"user": {"id": 1, "name": "alice"}, "count": 0})
    assert await browser.call("POST", "/api/logout") == (200, {"ok": True})
    assert (await browser.call("GET", "/api/me"))[0] == 401


async def test_the_session_cookie_attributes(base_url, settings):
    async with Browser(base_url) as b:
        async with b.http.post(base_url + "api/login", json={"username": "bob", "password": "builder"}) as r:
            cookie = r.cookies[settings.cookie_name]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == "86400"
    assert not cookie["secure"]
    assert settings.cookie_name != "AIOHTTP_SESSION"


async def test_secure_cookies_when_configured(serve, settings):
    base_url = await serve(settings, secure_cookies=True)
    async with Browser(base_url) as b:
        async with b.http.post(base_url + "api/login", json={"username": "bob", "password": "builder"}) as r:
            assert r.cookies[settings.cookie_name]["secure"] is True


@pytest.mark.parametrize("body", [
    {"username": "alice", "password": "nope"},
    {"username": "mallory", "password": "wonderland"},
    {"username": "alice", "password": ""},
])
async def test_bad_credentials_are_401(browser, body):
    status, reply = await browser.call("POST", "/api/login", body)
    assert status == 401 and reply["error"]["code"] == "bad_credentials"


@pytest.mark.parametrize("raw", ["not json", "[1]", '{"username": "alice"}', '{"username": 1, "password": "x"}', "",
                                 '{"username": "alice", "password": "\\ud800"}',  # a lone surrogate
                                 '{"username": "' + "a" * 65 + '", "password": "x"}'])
async def test_a_body_that_is_not_two_strings_is_400(browser, raw):
    status, reply = await browser.call("POST", "/api/login", data=raw, headers={"Content-Type": "application/json"})
    assert status == 400 and reply["error"]["code"] == "bad_request"


async def test_incr_counts_in_the_session(browser):
    assert (await browser.call("POST", "/api/incr"))[0] == 401
    await browser.login()
    assert await browser.call("POST", "/api/incr") == (200, {"count": 1})
    assert await browser.call("POST", "/api/incr") == (200, {"count": 2})


async def test_notify_validates_and_needs_login(browser):
    assert (await browser.call("POST", "/api/notify", {"message": "x"}))[0] == 401
    await browser.login()
    assert (await browser.call("POST", "/api/notify", {"message": ""}))[0] == 400
    assert (await browser.call("POST", "/api/notify", {"message": 5}))[0] == 400
    assert await browser.call("POST", "/api/notify", {"message": "hi"}) == (200, {"ok": True})


async def test_healthz(browser):
    assert await browser.call("GET", "/healthz") == (200, {"ok": True})


async def test_unknown_route_and_wrong_method_are_json(browser):
    status, body = await browser.call("GET", "/nope")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await browser.call("GET", "/api/login")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


async def test_the_demo_page_is_served(browser):
    status, body = await browser.call("GET", "/")
    assert status == 200 and body.lower().startswith("<!doctype html")


ALLOWED = "http://spa.example:5173"


@pytest.fixture
async def spa(serve, settings):
    return await serve(settings, allowed_origins=(ALLOWED,))


async def test_cors_for_an_allowed_origin_with_credentials(spa):
    async with Browser(spa) as b:
        async with b.http.post(spa + "api/login", json={"username": "alice", "password": "wonderland"},
                               headers={"Origin": ALLOWED}) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
            assert r.headers["Access-Control-Allow-Credentials"] == "true"
            assert "Origin" in r.headers.getall("Vary")
        async with b.http.post(spa + "api/logout", headers={"Origin": ALLOWED}) as r:
            pass
        # Errors carry the headers too, so the page can read its 401.
        async with b.http.get(spa + "api/me", headers={"Origin": ALLOWED}) as r:
            assert r.status == 401
            assert r.headers["Access-Control-Allow-Origin"] == ALLOWED


async def test_cors_preflight(spa):
    async with Browser(spa) as b:
        headers = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "content-type"}
        async with b.http.options(spa + "api/login", headers=headers) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
            assert r.headers["Access-Control-Allow-Credentials"] == "true"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
        headers["Origin"] = "http://evil.example"
        async with b.http.options(spa + "api/login", headers=headers) as r:
            assert r.status == 403
            assert "Access-Control-Allow-Origin" not in r.headers


async def test_no_cors_headers_for_other_origins(spa):
    async with Browser(spa) as b:
        async with b.http.get(spa + "api/me", headers={"Origin": "http://evil.example"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
            assert "Origin" in r.headers.getall("Vary")


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/me", "/nowhere"])
async def test_every_response_has_security_headers_and_no_versions(browser, path):
    async with browser.http.get(browser.base_url + path) as r:
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["Referrer-Policy"] == "same-origin"
        assert r.headers["Server"] == "session-sockets"
