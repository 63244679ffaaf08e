"""The README's "Use it in your own app" examples work as printed."""

import re

import server
from tests.helpers import ROOT, Browser, call, expect_close


def readme_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text().split(section, 1)[1]
    return re.findall(r"```python\n(.*?)```", text, re.S)


def readme_app(monkeypatch) -> dict:
    monkeypatch.setenv("SESSION_KEY", server.new_key().decode())
    namespace: dict = {}
    exec(compile(readme_blocks("## Use it in your own app")[0], "README.md", "exec"), namespace)
    return namespace


async def test_the_example_app(aiohttp_server, monkeypatch):
    server_ = await aiohttp_server(readme_app(monkeypatch)["app"])
    url = str(server_.make_url("/"))
    async with Browser(url) as b:
        status, _ = await b.call("POST", "/login")
        assert status == 200
        ws = await b.connect()
        assert ws.connected["user"] == {"id": 1, "name": "alice"}
        assert await call(ws, "chat", {"text": "hi"}) == {"ok": True}
        assert (await b.call("GET", "/client.js"))[0] == 200
        assert (await b.call("POST", "/login"))[0] == 200  # a newer login replaces the session
        await expect_close(ws, 4003)
        ws = await b.connect()
        await b.call("POST", "/logout")
        await expect_close(ws, 4001)


async def test_the_example_test(aiohttp_client, monkeypatch):
    namespace = readme_app(monkeypatch)
    exec(compile(readme_blocks("### Test your app")[0], "README.md", "exec"), namespace)
    await namespace["test_chat"](aiohttp_client)
