"""The README's "Use it in your own app" example works as printed."""

import re

from cryptography.fernet import Fernet

from tests.helpers import ROOT, Browser, call, expect_close


def readme_app():
    section = (ROOT / "README.md").read_text().split("## Use it in your own app", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {"fernet": Fernet(Fernet.generate_key())}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["app"]


async def test_the_example_app(aiohttp_server):
    server = await aiohttp_server(readme_app())
    url = str(server.make_url("/"))
    async with Browser(url) as b:
        status, _ = await b.call("POST", "/login")
        assert status == 200
        ws = await b.connect()
        assert ws.connected["user"] == {"id": 1, "name": "alice"}
        assert await call(ws, "chat", {"text": "hi"}) == {"ok": True}
        assert (await b.call("POST", "/login"))[0] == 200  # a newer login replaces the session
        await expect_close(ws, 4003)
        ws = await b.connect()
        await b.call("POST", "/logout")
        await expect_close(ws, 4001)
