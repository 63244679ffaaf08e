"""Reads of Redis keys that Redis itself keeps fresh: a cache invalidated by client tracking.

A per-message session reload that asks Redis every time costs a round trip per message,
more than the rest of the message's work. Instead, keys are read through one connection
that has `CLIENT TRACKING` on (RESP3): Redis remembers which keys it served on it and
pushes an `invalidate` message on that same connection as soon as any client, in any
process, changes or deletes one of them. A cached value is therefore used only until Redis
says it changed, and a reload costs a dictionary lookup.

Why a reload still sees every change that completed before the message was sent:

* Redis queues the invalidation for this connection while it executes the write, before
  it answers the writer, so the push is on its way here before the writer's HTTP response
  (and the client's next websocket frame) can be.
* The push is applied in `data_received`, in the same event-loop turn that reads it from
  the kernel, and a websocket frame's handler runs at least one turn after the frame is
  read: a push that arrived first is applied first.
* Replies and pushes come in one ordered stream, so a GET's value is cached at the point
  of the stream where it was read, and a later push removes it.
* Writes made by this process drop the key at once (`forget`), without waiting for Redis.
* While the connection is down, nothing is served from the cache: `get` raises
  `NotTracking` and the caller reads Redis directly. The cache is emptied on every
  disconnect, because pushes may have been lost.

Only the small part of RESP3 this needs is spoken here; everything else uses redis-py.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

_CRLF = b"\r\n"


class NotTracking(Exception):
    """The tracking connection is down: read Redis another way."""


class _ReplyError(Exception):
    """Redis answered a command with an error."""


class _Push(list):
    """An out-of-band RESP3 push message (`>`), e.g. `["invalidate", [key, ...]]`."""


def encode_command(*args: bytes | str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def parse_reply(buf: bytes | bytearray, pos: int) -> tuple[Any, int] | None:
    """Parse one RESP3 value at `pos`; returns (value, next position), or None if incomplete."""
    end = buf.find(_CRLF, pos)
    if end < 0:
        return None
    kind, line, pos = buf[pos:pos + 1], bytes(buf[pos + 1:end]), end + 2
    if kind in (b"$", b"=", b"!"):  # bulk string, verbatim string, bulk error
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            return None
        value = bytes(buf[pos:pos + size])
        return (_ReplyError(value.decode(errors="replace")) if kind == b"!" else value), pos + size + 2
    if kind in (b"*", b"~", b">", b"%", b"|"):  # array, set, push, map, attribute
        count = int(line) * (2 if kind in (b"%", b"|") else 1)
        items = []
        for _ in range(max(count, 0)):
            parsed = parse_reply(buf, pos)
            if parsed is None:
                return None
            item, pos = parsed
            items.append(item)
        if kind == b"|":  # attributes annotate the next value: skip them
            return parse_reply(buf, pos)
        if kind == b">":
            return _Push(items), pos
        return (dict(zip(items[::2], items[1::2])) if kind == b"%" else items), pos
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return _ReplyError(line.decode(errors="replace")), pos
    if kind in (b":", b"("):
        return int(line), pos
    if kind == b"_":
        return None, pos
    if kind == b"#":
        return line == b"t", pos
    if kind == b",":
        return float(line), pos
    raise ValueError(f"unexpected RESP3 type {kind!r}")


class _TrackingProtocol(asyncio.Protocol):
    """One RESP3 connection: pipelined commands answered in order, pushes applied at once."""

    def __init__(self, cache: TrackingCache) -> None:
        self._cache = cache
        self._buf = bytearray()
        # One entry per command sent: its future, the key whose value a GET will cache, and
        # the cache's write count when it was sent.
        self._waiting: deque[tuple[asyncio.Future[Any], bytes | None, int]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, command: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        if self.transport is None or self.transport.is_closing():
            raise NotTracking()
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((future, key, self._cache.writes))
        self.transport.write(command)
        return future

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while True:
            try:
                parsed = parse_reply(buf, pos)
            except ValueError:
                log.exception("unreadable reply on the Redis tracking connection")
                self.transport.abort()  # type: ignore[union-attr]
                return
            if parsed is None:
                break
            value, pos = parsed
            if type(value) is _Push:
                self._cache._pushed(value)
                continue
            future, key, writes = self._waiting.popleft()
            if key is not None and writes == self._cache.writes and not isinstance(value, _ReplyError):
                self._cache._store(key, value)
            if not future.done():
                if isinstance(value, _ReplyError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cache._lost(self)
        while self._waiting:
            future, _, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(NotTracking())
        if not self.lost.done():
            self.lost.set_result(None)


class TrackingCache:
    """Values of Redis keys, cached until Redis says they changed.

    Args:
        host, port, db, username, password: where Redis is (as in the redis-py client).
        max_entries: past this many cached keys, the cache starts over (it holds one key per
            session with a socket, so this bounds memory, not correctness).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, db: int = 0, *,
                 username: str | None = None, password: str | None = None,
                 max_entries: int = 100_000) -> None:
        self._address = (host, port)
        self._setup = [encode_command("HELLO", "3", *(
            ("AUTH", username or "default", password) if password else ()))]
        if db:
            self._setup.append(encode_command("SELECT", str(db)))
        self._setup.append(encode_command("CLIENT", "TRACKING", "ON"))
        self._max_entries = max_entries
        self._values: dict[bytes, bytes | None] = {}
        # Counts `forget` calls: a GET sent before one may have read the old value, so its
        # answer is returned but not cached.
        self.writes = 0
        self._protocol: _TrackingProtocol | None = None  # set while tracking is on
        self._task: asyncio.Task[None] | None = None
        self.tracking = asyncio.Event()

    async def start(self) -> None:
        """Connect in the background, and again whenever the connection is lost."""
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        self._values.clear()

    async def get(self, key: str) -> bytes | None:
        """The value of `key`, from the cache when Redis has not said it changed since.

        Raises:
            NotTracking: tracking is off (Redis unreachable, or reconnecting).
        """
        name = key.encode()
        protocol = self._protocol
        if protocol is None:
            raise NotTracking()
        try:
            return self._values[name]
        except KeyError:
            pass
        return await protocol.send(encode_command(b"GET", name), name)

    def forget(self, key: str) -> None:
        """Drop `key` from the cache (this process just wrote it)."""
        self.writes += 1
        self._values.pop(key.encode(), None)

    # -- called by the protocol ----------------------------------------------------------

    def _store(self, key: bytes, value: bytes | None) -> None:
        if len(self._values) >= self._max_entries:
            self._values.clear()
        self._values[key] = value

    def _pushed(self, push: _Push) -> None:
        if len(push) < 2 or push[0] != b"invalidate":
            return
        if push[1] is None:  # FLUSHALL / FLUSHDB, or Redis's tracking table overflowed
            self._values.clear()
            return
        for key in push[1]:
            self._values.pop(key, None)

    def _lost(self, protocol: _TrackingProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
            self.tracking.clear()
            log.warning("Redis tracking connection lost; session reloads read Redis until it is back")
        self._values.clear()

    # -- connecting -----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                protocol = await self._connect()
            except _ReplyError as exc:
                log.warning("Redis refused client tracking (%s); session reloads read Redis every time", exc)
                return
            except (OSError, NotTracking, asyncio.TimeoutError):
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            self._values.clear()
            self._protocol = protocol
            self.tracking.set()
            await protocol.lost

    async def _connect(self) -> _TrackingProtocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(5):
            _, protocol = await loop.create_connection(lambda: _TrackingProtocol(self), *self._address)
            try:
                for command in self._setup:
                    await protocol.send(command)
            except BaseException:
                protocol.transport.close()  # type: ignore[union-attr]
                raise
        return protocol
