from tests.helpers import call


async def test_connected_and_whoami(alice):
    ws = await alice.connect()
    assert ws.connected["user"] == {"id": 1, "name": "alice"}
    assert await call(ws, "whoami") == {"user": {"id": 1, "name": "alice"}, "rooms": []}
