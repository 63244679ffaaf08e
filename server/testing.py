"""A socket client for the tests of apps built on this library.

    from aiohttp.test_utils import TestClient, TestServer
    from server.testing import connect

    async with TestClient(TestServer(app)) as http:     # or pytest-aiohttp's aiohttp_client(app)
        await http.post("/login", json={...})            # the session cookie stays in http's jar
        async with await connect(http) as socket:        # the upgrade carries that cookie
            await socket.request("join", {"room": "lobby"})
            chat = await socket.receive("chat")
        assert socket.close_code == 1000

`connect` also takes an `aiohttp.ClientSession` and an absolute `ws://` URL, for a server
running elsewhere (give the session `CookieJar(unsafe=True)` for cookies of 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

import aiohttp

from .errors import ReplyError, RequestFailed

__all__ = ["Closed", "Received", "TestSocket", "connect"]

TIMEOUT = 5.0

Answerer = Callable[[Any], Awaitable[Any]]
_ENDS = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


class _Connects(Protocol):
    def ws_connect(self, url: str, **kw: Any) -> Any: ...


class Closed(Exception):
    """The socket closed (or was refused) before what was awaited came."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"socket closed with {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Received:
    """An event the server sent. `id` is set when it is a server request awaiting `reply`."""

    event: str
    data: Any
    id: int | None = None


async def connect(http: _Connects, url: str = "/ws", *, timeout: float = TIMEOUT, **ws_options: Any) -> TestSocket:
    """Open a socket and wait for its `connected` event.

    Args:
        http: an `aiohttp.test_utils.TestClient` (then `url` is a path) or an
            `aiohttp.ClientSession` (then an absolute URL); its cookies go with the upgrade.
        ws_options: passed to `ws_connect` (`headers=`, `origin=`, ...).

    Raises:
        Closed: the server refused the socket (e.g. 4401 without a login); `code` says why.
    """
    ws = await http.ws_connect(url, **ws_options)
    socket = TestSocket(ws, timeout)
    first = await socket._next_raw(timeout)
    if first is None:
        await socket._finish()
        await ws.close()
        raise Closed(socket.close_code, socket.close_reason)
    if first.get("event") != "connected":
        await ws.close()
        raise AssertionError(f"the first frame was not `connected`: {first!r}")
    socket.connected = first.get("data") or {}
    socket._start()
    return socket


class TestSocket:
    """One open socket: emit, request, answer server requests, receive events, close."""

    __test__ = False  # not a pytest test class

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout
        # The `connected` event's data: {"socket": id, "user": {...} or None}.
        self.connected: dict[str, Any] = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: deque[Received] = deque()
        self._arrived = asyncio.Event()
        self._answerers: dict[str, Answerer] = {}
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None  # what broke the read loop or an answerer
        # Acks that matched no waiting request (a late one, a second one for the same id).
        self.stray_acks: list[dict[str, Any]] = []
        self._answering: set[asyncio.Task[None]] = set()
        self._done = asyncio.Event()

    @property
    def id(self) -> str:
        """The socket's id, as the server named it in `connected`."""
        return str(self.connected.get("socket"))

    @property
    def user(self) -> Any:
        return self.connected.get("user")

    # -- sending -------------------------------------------------------------------------

    async def emit(self, event: str, data: Any = None) -> None:
        """Send an event without an `id`: no ack comes (an error comes as an `error` event)."""
        await self.send({"event": event, "data": data})

    async def request(self, event: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Send an event with an `id` and return the ack's `data`.

        Raises:
            RequestFailed: the server answered with an error ack (`.code`, `.message`).
            TimeoutError: no ack within `timeout` (default: the socket's).
            Closed: the socket closed first.
        """
        id = next(self._ids)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[id] = waiter
        try:
            await self.send({"event": event, "data": data, "id": id})
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                return await waiter
        except TimeoutError:
            self._raise_failure()
            raise
        finally:
            self._pending.pop(id, None)

    async def send(self, frame: dict[str, Any] | str) -> None:
        """Send a frame as it is: a dict as JSON, a string as it stands (for bad input)."""
        if self.close_code is not None:
            raise Closed(self.close_code, self.close_reason)
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    # -- server requests -----------------------------------------------------------------

    def answer(self, event: str, answerer: Answerer) -> None:
        """Answer every server request `event` with `await answerer(data)`; raising a
        `ReplyError` (e.g. `Forbidden("no")`) answers with that error instead."""
        self._answerers[event] = answerer

    async def reply(self, id: int, data: Any = None) -> None:
        """Answer a server request received with `receive`."""
        await self.send({"ack": id, "data": data})

    async def reply_error(self, id: int, code: str, message: str) -> None:
        await self.send({"ack": id, "error": {"code": code, "message": message}})

    # -- receiving -----------------------------------------------------------------------

    async def receive(self, event: str | None = None, *, timeout: float | None = None) -> Received:
        """The first event not yet received (the first named `event`, if given; others
        stay for later calls).

        Raises:
            TimeoutError: none came within `timeout` (default: the socket's).
            Closed: the socket closed first.
        """
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            while True:
                self._raise_failure()
                for item in self._events:
                    if event is None or item.event == event:
                        self._events.remove(item)
                        return item
                if self._done.is_set():
                    raise Closed(self.close_code, self.close_reason)
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_closed(self, *, timeout: float | None = None) -> int | None:
        """Wait until the server closes the socket; returns the close code."""
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            await self._done.wait()
        self._raise_failure()
        return self.close_code

    async def close(self, code: int = 1000) -> int | None:
        """Close from the client's side (if still open); returns the close code."""
        if not self._done.is_set():
            await self.ws.close(code=code)
            await self._done.wait()
        if self.close_code is None:
            self.close_code = self.ws.close_code
        return self.close_code

    async def __aenter__(self) -> TestSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the read loop -------------------------------------------------------------------

    def _start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (frame := await self._next_raw(None)) is not None:
                await self._route(frame)
        except Exception as exc:  # a frame the protocol does not allow: the test must see it
            self._failure = exc
            await self.ws.close()
        finally:
            await self._finish()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise AssertionError(f"the test socket failed: {self._failure!r}") from self._failure

    async def _next_raw(self, timeout: float | None) -> dict[str, Any] | None:
        """The next frame as JSON, or None once the socket is closed."""
        while True:
            msg = await self.ws.receive(timeout)
            if msg.type is aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                if type(frame) is not dict:
                    raise AssertionError(f"the server sent a frame that is not an object: {msg.data!r}")
                return frame
            if msg.type is aiohttp.WSMsgType.CLOSE:  # aiohttp has answered it
                self.close_code, self.close_reason = msg.data, msg.extra or ""
            if msg.type in _ENDS:
                return None

    async def _route(self, frame: dict[str, Any]) -> None:
        if "ack" in frame:
            waiter = self._pending.get(frame["ack"])
            if waiter is None or waiter.done():
                self.stray_acks.append(frame)
                return
            error = frame.get("error")
            if error is not None:
                waiter.set_exception(RequestFailed(error["code"], error["message"]))
            else:
                waiter.set_result(frame.get("data"))
            return
        if type(frame.get("event")) is not str:
            raise AssertionError(f"the server sent a frame that is neither an event nor an ack: {frame!r}")
        item = Received(frame["event"], frame.get("data"), frame.get("id"))
        answerer = self._answerers.get(item.event)
        if item.id is not None and answerer is not None:
            task = asyncio.create_task(self._answer(answerer, item))  # reading goes on meanwhile
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)
            return
        self._events.append(item)
        self._arrived.set()

    async def _answer(self, answerer: Answerer, item: Received) -> None:
        assert item.id is not None
        try:
            result = await answerer(item.data)
        except ReplyError as exc:
            await self.reply_error(item.id, exc.code.value, exc.message)
        except Exception as exc:  # the test's own answerer broke: answer, and fail the test
            self._failure = exc
            self._arrived.set()
            await self.reply_error(item.id, "internal", f"the test's answerer raised {exc!r}")
        else:
            await self.reply(item.id, result)

    async def _finish(self) -> None:
        if self.close_code is None:
            self.close_code = self.ws.close_code
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(Closed(self.close_code, self.close_reason) if self._failure is None
                                     else AssertionError(f"the test socket failed: {self._failure!r}"))
        self._done.set()
        self._arrived.set()
