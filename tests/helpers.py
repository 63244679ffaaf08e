"""Short ways to drive the server from tests: a browser-like client, frames, waits."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from server.testing import TestSocket, connect

ROOT = Path(__file__).resolve().parent.parent

TIMEOUT = 5.0


class Browser:
    """One cookie jar (one browser) against a base URL: log in, call the API, open sockets."""

    def __init__(self, base_url: str, origin: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.origin = origin
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in self.sockets:
            await ws.close()
        await self.http.close()

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        if body is not None:
            kw["json"] = body
        async with self.http.request(method, self.base_url + path, **kw) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text and r.content_type == "application/json" else text)

    async def login(self, name: str = "alice", password: str | None = None) -> dict[str, Any]:
        password = password or {"alice": "wonderland", "bob": "builder"}[name]
        status, body = await self.call("POST", "/api/login", {"username": name, "password": password})
        assert status == 200, body
        return body["user"]

    async def connect(self, **kw: Any) -> aiohttp.ClientWebSocketResponse:
        """Open a socket and read its `connected` frame (kept on `ws.connected`)."""
        ws = await self.open(**kw)
        ws.connected = await expect_event(ws, "connected")  # type: ignore[attr-defined]
        return ws

    async def open(self, url: str | None = None, **kw: Any) -> aiohttp.ClientWebSocketResponse:
        """Open a socket to this browser's server, or to `url` (another process of the app)."""
        headers = kw.pop("headers", {})
        if self.origin:
            headers.setdefault("Origin", self.origin)
        ws = await self.http.ws_connect((url or self.base_url).rstrip("/") + "/ws", headers=headers, **kw)
        self.sockets.append(ws)
        return ws

    async def socket(self, url: str | None = None, **kw: Any) -> TestSocket:
        """A socket through the package's test client (`server.testing`), closed on exit."""
        headers = kw.pop("headers", {})
        if self.origin:
            headers.setdefault("Origin", self.origin)
        socket = await connect(self.http, (url or self.base_url).rstrip("/") + "/ws", headers=headers, **kw)
        self.sockets.append(socket.ws)
        return socket

    def cookie(self) -> str:
        return "; ".join(f"{c.key}={c.value}" for c in self.http.cookie_jar)


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg!r} (close code {ws.close_code})"
    return json.loads(msg.data)


async def expect_event(ws: aiohttp.ClientWebSocketResponse, name: str) -> Any:
    """Read frames until event `name` arrives (others are skipped); returns its data."""
    while True:
        frame = await receive_json(ws)
        if frame.get("event") == name:
            return frame.get("data")


async def expect_close(ws: aiohttp.ClientWebSocketResponse, code: int) -> str:
    """Read until the server closes the socket; assert the code, return the reason."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            break
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
    # The code of the server's close frame; aiohttp's `close_code` would read 1006 if the
    # server dropped the connection before our answering close frame got there.
    got = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else ws.close_code
    assert got == code, f"closed with {got}, expected {code}: {msg}"
    return msg.extra or ""


_ids = iter(range(1, 1 << 30))


async def ask(ws: aiohttp.ClientWebSocketResponse, event: str, data: Any = None) -> dict[str, Any]:
    """Send an event with a fresh id; return the matching ack frame (events in between are skipped)."""
    id = next(_ids)
    frame: dict[str, Any] = {"event": event, "id": id}
    if data is not None:
        frame["data"] = data
    await ws.send_str(json.dumps(frame))
    return await expect_ack(ws, id)


async def expect_ack(ws: aiohttp.ClientWebSocketResponse, id: int) -> dict[str, Any]:
    while True:
        frame = await receive_json(ws)
        if frame.get("ack") == id:
            return frame


async def call(ws: aiohttp.ClientWebSocketResponse, event: str, data: Any = None) -> Any:
    """Like `ask`, but asserts success and returns the ack's data."""
    frame = await ask(ws, event, data)
    assert "error" not in frame, frame
    return frame["data"]


async def until(probe, what: str, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Call `probe()` until it returns something true; there is no event to await from outside."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunPy:
    """`python run.py` in a subprocess, ready once it prints its URL."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd=None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = [sys.executable, str(ROOT / "run.py"), "--port", str(self.port), *args]
        self.env = {**os.environ, "HEARTBEAT": "0", **(env or {})}
        self.env.pop("REDIS_URL", None) if "REDIS_URL" not in (env or {}) else None
        self.cwd = cwd
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._watchers: list[tuple[re.Pattern[str], asyncio.Future[re.Match[str]]]] = []
        self._lock = threading.Lock()

    async def __aenter__(self) -> "RunPy":
        self.process = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def read() -> None:
            # Read the whole time: a server whose output pipe is full stops in its next log line.
            for line in self.process.stdout:  # type: ignore[union-attr]
                with self._lock:
                    self.output.append(line)
                    for pattern, waiter in self._watchers:
                        match = pattern.search(line)
                        if match:
                            loop.call_soon_threadsafe(lambda w=waiter, m=match: w.done() or w.set_result(m))
                if line.startswith("Serving the demo on") and not ready.done():
                    loop.call_soon_threadsafe(ready.set_result, None)
            loop.call_soon_threadsafe(lambda: ready.done() or ready.set_exception(
                RuntimeError("run.py exited:\n" + "".join(self.output))))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        await ready
        return self

    async def stop(self, sig: int = signal.SIGTERM) -> float:
        start = time.monotonic()
        self.process.send_signal(sig)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.process.wait)
        await loop.run_in_executor(None, self._reader.join)
        return time.monotonic() - start

    def log(self) -> str:
        return "".join(self.output)

    async def line(self, pattern: str, timeout: float = TIMEOUT, since: int = 0) -> re.Match[str]:
        """The first line of the output (so far, or to come) that matches `pattern`; with
        `since`, among the lines after the first `since` ones (`len(run.output)` earlier)."""
        regex = re.compile(pattern)
        waiter: asyncio.Future[re.Match[str]] = asyncio.get_running_loop().create_future()
        with self._lock:
            for line in self.output[since:]:
                if match := regex.search(line):
                    return match
            self._watchers.append((regex, waiter))
        try:
            return await asyncio.wait_for(waiter, timeout)
        finally:
            with self._lock:
                self._watchers.remove((regex, waiter))

    async def __aexit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            await self.stop()


class Crowd:
    """Many sockets and requests with one cookie, all at once (no client connection limit)."""

    def __init__(self, cookie: str) -> None:
        self.headers = {"Cookie": cookie}
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def __aenter__(self) -> Crowd:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
        await self.http.close()

    async def connect(self, base_url: str, count: int) -> list[aiohttp.ClientWebSocketResponse]:
        """Open `count` sockets at the same moment; each has read its `connected` frame."""
        async def one() -> aiohttp.ClientWebSocketResponse:
            ws = await self.http.ws_connect(base_url.rstrip("/") + "/ws", headers=self.headers)
            self.sockets.append(ws)
            ws.connected = await expect_event(ws, "connected")  # type: ignore[attr-defined]
            return ws

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def post(self, url: str) -> int:
        async with self.http.post(url, headers=self.headers) as r:
            await r.read()
            return r.status

    async def close(self) -> None:
        """Close every socket at the same moment."""
        sockets, self.sockets = self.sockets, []
        await asyncio.gather(*(ws.close() for ws in sockets))


async def login_cookie(base_url: str, name: str = "alice") -> str:
    async with Browser(base_url) as b:
        await b.login(name)
        return b.cookie()


async def ask_many(ws: aiohttp.ClientWebSocketResponse, event: str, count: int,
                   data: Any = None) -> list[dict[str, Any]]:
    """Send `count` events at once on one socket (pipelined); return their ack frames in order."""
    ids = [next(_ids) for _ in range(count)]
    for id in ids:
        await ws.send_str(json.dumps({"event": event, "id": id, "data": data}))
    acks: dict[int, dict[str, Any]] = {}
    while len(acks) < count:
        frame = await receive_json(ws)
        if frame.get("ack") in ids:
            acks[frame["ack"]] = frame
    return [acks[id] for id in ids]


class FreezableProxy:
    """A TCP proxy to a local port that can stop forwarding while keeping its connections
    open: a network partition, or a stuck load balancer, as the client sees it."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = free_port()
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.flowing.set()
        self._server.close()  # type: ignore[union-attr]
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def cut(self) -> None:
        """Drop every connection at once, without a close frame or a FIN (a lost network)."""
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for a, b in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(a, b))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()  # frozen: what was read is held, nothing moves
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
