"""The README's "Use it in your own app" examples work as printed."""

import re

import server
from tests.helpers import ROOT, Browser, call, expect_close, receive_json


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


async def test_the_missed_messages_example(aiohttp_server, monkeypatch):
    namespace = readme_app(monkeypatch)
    exec(compile(readme_blocks("### Missed messages")[0], "README.md", "exec"), namespace)
    server_ = await aiohttp_server(namespace["app"])
    async with Browser(str(server_.make_url("/"))) as b:
        await b.call("POST", "/login")
        first, speaker = await b.connect(), await b.connect()  # both put in lobby on accept
        await call(speaker, "chat", {"text": "seen"})
        seen = await expect_event_frame(first, "chat")
        await first.close()
        await call(speaker, "chat", {"text": "missed"})
        again = await b.connect()
        since = {"epoch": seen["epoch"], "offset": seen["offset"]}
        await again.send_json({"event": "join", "data": {"room": "lobby", "since": since}, "id": 1})
        replayed = await receive_json(again)
        assert (replayed["data"]["text"], replayed["offset"]) == ("missed", seen["offset"] + 1)
        assert await receive_json(again) == {"ack": 1, "data": {"room": "lobby", "epoch": seen["epoch"],
                                                                "offset": seen["offset"] + 1, "recovered": True}}


async def expect_event_frame(ws, name: str) -> dict:
    while (frame := await receive_json(ws)).get("event") != name:
        pass
    return frame
