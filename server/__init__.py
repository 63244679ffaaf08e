"""Websockets that share the session of the aiohttp HTTP routes.

Import from the modules (`server.hub`, `server.transport`, ...): this file imports nothing,
so the codec (`server.protocol`) stays usable without aiohttp.
"""
