"""Websockets that share the session of the aiohttp HTTP routes.

    from aiohttp import web
    import server

    app = web.Application()
    hub = server.setup(app, server.CookieSessionBridge(server.new_key()))

    @hub.on("chat")
    async def chat(socket, data):
        await hub.emit("chat", data, room="lobby")
        return {"ok": True}

Everything an app needs is exported here; the modules behind it are named in the README's
"Layout". The codec (`server.protocol`) imports neither aiohttp nor asyncio.
"""

__version__ = "0.2.0"
