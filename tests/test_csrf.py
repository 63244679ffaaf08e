"""Cross-site request forgery, tried in a real Chromium from attacker pages of another origin.

The victim is logged in on the demo at http://127.0.0.1:P. The attacker's pages come from
another port of the same host (same site: `SameSite` cookies are sent) and from
http://localhost:Q (another site). Each tries what a page can do without CORS: a form
posted at the top level (which may set cookies: login CSRF), and `fetch` with
`mode: "no-cors"` and a `text/plain` body.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from tests.helpers import RunPy, free_port

LOGIN_AS_ATTACKER = '{"username": "bob", "password": "builder", "pad": "'  # text/plain forms send name=value


def attacker_app(victim: str) -> web.Application:
    pages = {
        "login": f"""<form id="f" method="POST" action="{victim}api/login" enctype="text/plain">
                       <input name='{LOGIN_AS_ATTACKER}' value='"}}'></form>
                     <script>document.getElementById("f").submit()</script>""",
        "logout": f"""<form id="f" method="POST" action="{victim}api/logout" enctype="text/plain">
                        <input name="x" value="y"></form>
                      <script>document.getElementById("f").submit()</script>""",
        "incr": f"""<script>
                      Promise.allSettled([
                        fetch("{victim}api/incr", {{method: "POST", mode: "no-cors", credentials: "include"}}),
                        fetch("{victim}api/incr", {{method: "POST", mode: "no-cors", credentials: "include",
                                                   headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}}),
                        fetch("{victim}api/notify", {{method: "POST", mode: "no-cors", credentials: "include",
                                                     body: '{{"message": "pwned"}}'}}),
                      ]).then(() => {{ document.title = "done"; }});
                    </script>""",
    }

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=pages[request.match_info["name"]], content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", page)
    return app


@pytest.fixture
async def attacker(server):
    runner = web.AppRunner(attacker_app(server.url))
    await runner.setup()
    port = free_port()
    for host in ("127.0.0.1", "::1"):  # "localhost" may be either
        await web.TCPSite(runner, host, port).start()
    yield port
    await runner.cleanup()


@pytest.fixture
async def server(tmp_path):
    async with RunPy(env={"SESSION_KEY_FILE": str(tmp_path / "key")}) as server:
        yield server


@pytest.mark.parametrize("attacker_host", ["127.0.0.1", "localhost"], ids=["same-site", "cross-site"])
async def test_pages_of_other_origins_cannot_log_in_log_out_or_write(chromium, server, attacker, attacker_host):
    context = await chromium.new_context()
    victim = await context.new_page()
    await victim.goto(server.url)
    reply = await victim.evaluate("""fetch("/api/login", {method: "POST", headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify({username: "alice", password: "wonderland"})})
                                     .then(r => r.status)""")
    assert reply == 200
    evil = await context.new_page()
    base = f"http://{attacker_host}:{attacker}/"
    for attack in ("login", "logout"):
        await evil.goto(base + attack)
        await evil.wait_for_url(f"{server.url}api/{attack}")  # the form was posted, the answer shown
        assert "forbidden_origin" in await evil.content()
    await evil.goto(base + "incr")
    await evil.wait_for_function("document.title === 'done'")
    me = await victim.evaluate("fetch('/api/me').then(r => r.json())")
    assert me == {"user": {"id": 1, "name": "alice"}, "count": 0}  # still alice, nothing changed
    # The page's own requests, with its own Origin, still work.
    assert await victim.evaluate("fetch('/api/incr', {method: 'POST'}).then(r => r.json())") == {"count": 1}
    await context.close()
