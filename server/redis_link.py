"""One pipelined RESP3 connection to Redis per process, watched for liveness.

Every Redis command of the server goes through a `RedisLink`: session reads and writes,
publishes, subscriptions, room sizes. Commands are written as soon as they are made and
answered in order on the one connection, so a burst of 5,000 requests queues in the TCP
stream and costs Redis one read per batch; nothing is refused because "every connection
is busy". (A connection pool of N limits a process to N commands in flight: redis-py's
default pool of 100 raises at once past that, and a blocking pool of 50 took 0.76 s for
5,000 concurrent GETs where this link takes 0.055 s on the same machine.)

Liveness. A connection whose peer stops answering (Redis frozen, a partition, a stuck
proxy) stays open for minutes, so the link sends a PING every `timeout / 3` seconds and
gives up on the connection when one is not answered within `timeout`: every command
waiting on it fails with `RedisUnavailable`, the `on_down` listeners run (the session
cache drops everything it holds), and the link reconnects with backoff. So no command
waits longer than about `timeout * 4 / 3` for an answer, and a command made while the
link is down fails at once. A command is never retried by the link: the caller decides.

The connection is also where Redis pushes client-tracking invalidations and pub/sub
messages (RESP3 allows both beside ordinary commands): pushes are handed to listeners in
the same event-loop turn that reads them, in stream order (see `redis_tracking`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, cast
from urllib.parse import parse_qs, unquote, urlsplit

from .resp import Push, ReplyError, encode_command, parse_reply

log = logging.getLogger(__name__)

_PING = encode_command("PING")
_ROLE = encode_command("ROLE")
# The loop ran this much later than a liveness check was due: it was busy, not Redis
# silent, so the check looks again shortly instead of dropping the connection.
_LAG_GRACE = 0.1
# Reconnecting: the first wait after a failed attempt, and the most it doubles to; each
# wait is jittered to 0.5-1.5 times that.
_FIRST_DELAY = 0.05
_MAX_DELAY = 0.5
# The longest a link waits between two attempts to reconnect. A link whose Redis is back
# is up again within this (plus one attempt, `timeout` at most, that was under way).
RECONNECT_GAP = _MAX_DELAY * 1.5


class RedisUnavailable(Exception):
    """Redis cannot be reached, or did not answer in time; the message says why."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is, from a `redis://`, `rediss://` (TLS), `unix://` or
    `redis+sentinel://` URL."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca: str | None = None  # a CA file to verify Redis's certificate with (else the system's)
    # Sentinel: the master of `service`, as these Sentinels (host, port) name it now.
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """Parse `redis://[[user]:password@]host[:port][/db]`, `rediss://...[?ssl_ca_certs=FILE]`
        (TLS), `unix:///path[?db=N]`, `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`
        (the password is the master's; Sentinels are asked without one).

        Raises:
            ValueError: not such a URL.
        """
        if url.startswith("redis+sentinel://"):
            return cls._sentinel_url(url)
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        try:
            if parts.scheme == "unix":
                if not parts.path:
                    raise ValueError
                db = int(query.get("db", ["0"])[0])
                return cls(path=parts.path, db=db, username=_unquoted(parts.username),
                           password=_unquoted(parts.password))
            if parts.scheme not in ("redis", "rediss") or not parts.hostname:
                raise ValueError
            db = int(parts.path.strip("/") or query.get("db", ["0"])[0])
            return cls(host=parts.hostname, port=parts.port or 6379, db=db, username=_unquoted(parts.username),
                       password=_unquoted(parts.password), tls=parts.scheme == "rediss",
                       tls_ca=query.get("ssl_ca_certs", [None])[0])
        except ValueError:
            raise ValueError(f"not a Redis URL: {url!r} (expected redis://host[:port][/db], "
                             "rediss://... for TLS, or unix:///path/to/socket)") from None

    @classmethod
    def _sentinel_url(cls, url: str) -> RedisAddress:
        rest = url[len("redis+sentinel://"):]
        netloc, _, path = rest.partition("/")
        userinfo, _, hosts = netloc.rpartition("@")
        username, _, password = userinfo.partition(":")
        names = [p for p in path.split("/") if p]
        try:
            sentinels = []
            for item in hosts.split(","):
                host, _, port = item.rpartition(":")
                sentinels.append((host.strip("[]") or "127.0.0.1", int(port)))
            if not names or len(names) > 2 or not sentinels:
                raise ValueError
            db = int(names[1]) if len(names) == 2 else 0
        except ValueError:
            raise ValueError(f"not a Sentinel URL: {url!r} (expected redis+sentinel://host:port[,host:port...]"
                             "/service[/db])") from None
        return cls(sentinels=tuple(sentinels), service=unquote(names[0]), db=db,
                   username=_unquoted(username), password=_unquoted(password))

    def __str__(self) -> str:  # for logs: never the password
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"redis+sentinel://{hosts}/{self.service}/{self.db}"
        if self.path is not None:
            return f"unix://{self.path}?db={self.db}"
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


def _unquoted(value: str | None) -> str | None:
    return unquote(value) if value else None


class _Protocol(asyncio.Protocol):
    """The connection: commands out (batched per loop turn), replies matched in order, pushes out."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._buf = bytearray()
        self._out: list[bytes] = []
        # One entry per command sent: its future, and what to call with its value at its
        # place in the stream (before any later push is applied).
        self.waiting: deque[tuple[asyncio.Future[Any], Callable[[Any], None] | None]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # from create_(unix_)connection: a stream

    def send(self, command: bytes, on_reply: Callable[[Any], None] | None = None,
             *, answered: bool = True) -> asyncio.Future[Any]:
        """Queue `command`; the future gets its reply. `answered=False`: a command whose
        only answer is a push (SUBSCRIBE): no reply to wait for."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.closed.done():
            raise RedisUnavailable(self._link.cause or "the connection to Redis is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if answered:
            self.waiting.append((future, on_reply))
        else:
            future.set_result(None)
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(command)
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))  # one system call for every command of a loop turn

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        link = self._link
        while True:
            try:
                parsed = parse_reply(buf, pos)
            except ValueError:
                log.error("unreadable reply from Redis; reconnecting")
                link._down(self, "an unreadable reply from Redis")
                return
            if parsed is None:
                break
            value, pos = parsed
            if type(value) is Push:
                link._pushed(value)
                continue
            if not self.waiting:
                link._down(self, "an unexpected reply from Redis")
                return
            future, on_reply = self.waiting.popleft()
            if isinstance(value, ReplyError):
                if not future.done():
                    future.set_exception(value)
                if link.address.sentinels and str(value).startswith("READONLY"):
                    link._down(self, "Redis answered as a replica (a failover): asking the Sentinels again")
                    return
                continue
            if on_reply is not None:
                on_reply(value)
            if not future.done():
                future.set_result(value)
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._down(self, f"connection lost ({exc})" if exc else "Redis closed the connection")


class RedisLink:
    """A process's connection to Redis (see the module docstring).

    Args:
        address: where Redis is.
        timeout: seconds within which Redis must answer a PING, and within which a
            connection must be set up; past it, Redis counts as unreachable.
        tracking: turn on client tracking (RESP3 invalidation pushes, `redis_tracking`).
    """

    def __init__(self, address: RedisAddress, *, timeout: float = 1.5, tracking: bool = False) -> None:
        if timeout <= 0:
            raise ValueError("the Redis timeout must be more than 0 seconds")
        self.address = address
        self.timeout = timeout
        self.tracking = tracking
        self.up = asyncio.Event()  # set while commands can be sent
        self.cause: str | None = None  # why Redis is unreachable, while it is
        self.on_up: list[Callable[[], None]] = []
        self.on_down: list[Callable[[], None]] = []
        self.on_push: list[Callable[[Push], None]] = []
        self._channels: dict[bytes, Callable[[bytes], None]] = {}
        self._protocol: _Protocol | None = None  # set while up
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._down_since: float | None = None
        self._logged_at = 0.0
        self._closing = False
        self.replicas = 0  # Sentinel mode: the replicas the master has, at the last look

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> RedisLink:
        return cls(RedisAddress.from_url(url), **kw)

    # -- running ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background, and again whenever the connection is lost.

        Waits up to `timeout` for the first connection; a server whose Redis is down
        starts anyway (and answers `unavailable` until Redis is reachable).
        """
        self._task = asyncio.create_task(self._run())
        try:
            await asyncio.wait_for(self.up.wait(), self.timeout)
        except asyncio.TimeoutError:
            pass

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        protocol = self._protocol
        if protocol is not None:
            self._down(protocol, "the link was closed")
            if protocol.transport is not None:
                protocol.transport.close()

    # -- commands ---------------------------------------------------------------------

    def call(self, *args: bytes | str | int, on_reply: Callable[[Any], None] | None = None) -> asyncio.Future[Any]:
        """Send one command; await the result for its reply.

        `on_reply(value)` runs when the reply is read, before anything Redis sent after it.

        Raises:
            RedisUnavailable: Redis is unreachable (at once), or did not answer in time.
            ReplyError: Redis answered with an error.
        """
        protocol = self._protocol
        if protocol is None:
            raise RedisUnavailable(self.cause or "not connected to Redis yet")
        return protocol.send(encode_command(*args), on_reply)

    async def ping(self) -> bool:
        """Whether Redis answers now (within the liveness bound)."""
        try:
            return bool(await self.call("PING") == b"PONG")
        except (RedisUnavailable, ReplyError):
            return False

    async def subscribe(self, channel: str | bytes, handler: Callable[[bytes], None]) -> None:
        """Hand every message of `channel` to `handler`, now and after every reconnect.

        Raises:
            RedisUnavailable: not subscribed now (it will be once Redis is reachable).
        """
        name = channel.encode() if isinstance(channel, str) else channel
        self._channels[name] = handler
        protocol = self._protocol
        if protocol is None:
            raise RedisUnavailable(self.cause or "not connected to Redis yet")
        protocol.send(encode_command("SUBSCRIBE", name), answered=False)
        await protocol.send(_PING)  # answered after the subscription is in place

    def unsubscribe(self, channel: str | bytes) -> None:
        """Stop handing messages of `channel` on (at once; Redis stops sending them soon)."""
        name = channel.encode() if isinstance(channel, str) else channel
        if self._channels.pop(name, None) is not None and self._protocol is not None:
            self._protocol.send(encode_command("UNSUBSCRIBE", name), answered=False)

    # -- connecting -------------------------------------------------------------------

    async def _run(self) -> None:
        delay = _FIRST_DELAY
        while True:
            try:
                protocol = await self._connect()
            except Exception as exc:  # whatever it was, this loop must go on reconnecting
                if not isinstance(exc, (OSError, asyncio.TimeoutError, RedisUnavailable, ReplyError)):
                    log.exception("unexpected failure connecting to Redis")
                self._note_down(_describe(exc, self.timeout))
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, _MAX_DELAY)
                continue
            delay = _FIRST_DELAY
            self._protocol = protocol
            self.cause = None
            if self._down_since is not None:
                log.warning("Redis at %s reachable again after %.1f s", self.address,
                            time.monotonic() - self._down_since)
                self._down_since = None
            self.up.set()
            self._tick()
            _notify(self.on_up)
            await asyncio.shield(protocol.closed)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        a = self.address
        async with asyncio.timeout(self.timeout):
            host, port = (await self._ask_sentinels()) if a.sentinels else (a.host, a.port)
            if a.path is not None:
                _, protocol = await loop.create_unix_connection(lambda: _Protocol(self), a.path)
            else:
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self), host, port,
                    ssl=ssl.create_default_context(cafile=a.tls_ca) if a.tls else None)
            try:
                hello: list[str] = ["HELLO", "3"]
                if a.password is not None:
                    hello += ["AUTH", a.username or "default", a.password]
                replies = [protocol.send(encode_command(*hello))]
                if a.db:
                    replies.append(protocol.send(encode_command("SELECT", a.db)))
                if self.tracking:
                    replies.append(protocol.send(encode_command("CLIENT", "TRACKING", "ON")))
                for channel in self._channels:
                    protocol.send(encode_command("SUBSCRIBE", channel), answered=False)
                replies.append(protocol.send(_ROLE if a.sentinels else _PING))
                done = await asyncio.gather(*replies)
                if a.sentinels:
                    self._check_role(done[-1], f"{host}:{port}")
            except BaseException:
                if protocol.transport is not None:
                    protocol.transport.abort()
                raise
        return protocol

    async def _ask_sentinels(self) -> tuple[str, int]:
        """The address of the current master, from the first Sentinel that answers."""
        causes = []
        for host, port in self.address.sentinels:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                causes.append(f"Sentinel {host}:{port}: {exc.strerror or exc}")
                continue
            try:
                writer.write(encode_command("SENTINEL", "get-master-addr-by-name", self.address.service or ""))
                buf = b""
                while (parsed := parse_reply(buf, 0)) is None:
                    chunk = await reader.read(4096)
                    if not chunk:
                        raise ConnectionError("the Sentinel closed the connection")
                    buf += chunk
                reply = parsed[0]
            except (OSError, ValueError) as exc:
                causes.append(f"Sentinel {host}:{port}: {exc}")
                continue
            finally:
                writer.close()
            if isinstance(reply, list) and len(reply) == 2:
                return reply[0].decode(), int(reply[1])
            causes.append(f"Sentinel {host}:{port} knows no master {self.address.service!r}")
        raise RedisUnavailable("; ".join(causes) or "no Sentinel")

    def _check_role(self, role: Any, where: str) -> None:
        """Sentinel mode: the link must talk to the master (a replica's reads lag, and its
        invalidations come too late for the reload guarantee)."""
        if not (isinstance(role, list) and role and role[0] == b"master"):
            raise RedisUnavailable(f"{where} is not the master (a failover is under way)")
        self.replicas = len(role[2]) if len(role) > 2 and isinstance(role[2], list) else 0

    def _note_down(self, cause: str) -> None:
        # Logged once when Redis becomes unreachable, then every 10 s while it stays so.
        self.cause = cause
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = self._logged_at = now
            log.warning("Redis at %s unreachable: %s; answering `unavailable` until it is back", self.address, cause)
        elif now - self._logged_at >= 10:
            self._logged_at = now
            log.warning("Redis at %s still unreachable after %.0f s: %s", self.address, now - self._down_since, cause)

    # -- liveness ---------------------------------------------------------------------

    def _tick(self) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        loop = asyncio.get_running_loop()
        if self.address.sentinels:  # after a failover the old master answers PING as a replica
            pong = protocol.send(_ROLE, on_reply=lambda role: self._still_master(protocol, role))
        else:
            pong = protocol.send(_PING)
        pong.add_done_callback(_retrieve)
        loop.call_later(self.timeout, self._check, protocol, pong, loop.time() + self.timeout)
        self._ticker = loop.call_later(self.timeout / 3, self._tick)

    def _still_master(self, protocol: _Protocol, role: Any) -> None:
        try:
            self._check_role(role, str(self.address))
        except RedisUnavailable as exc:
            self._down(protocol, str(exc))  # reconnects, asking the Sentinels again

    def _check(self, protocol: _Protocol, pong: asyncio.Future[Any], due: float) -> None:
        if pong.done() or protocol is not self._protocol:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - due > _LAG_GRACE:  # the answer may be waiting to be read
            loop.call_later(_LAG_GRACE / 2, self._check, protocol, pong, loop.time() + _LAG_GRACE / 2)
            return
        self._down(protocol, f"no answer from Redis within {self.timeout:g} s")

    # -- called by the protocol -------------------------------------------------------

    def _pushed(self, push: Push) -> None:
        try:
            if len(push) == 3 and push[0] == b"message":
                handler = self._channels.get(push[1])
                if handler is not None:
                    handler(push[2])
                return
            for listener in self.on_push:
                listener(push)
        except Exception:  # the stream must go on being read
            log.exception("handling a push from Redis failed")

    def _down(self, protocol: _Protocol, cause: str) -> None:
        """The connection is unusable: fail what waits on it, tell the listeners, reconnect."""
        if protocol.closed.done():
            return
        protocol.closed.set_result(None)
        if protocol.transport is not None:
            protocol.transport.abort()
        was_up = protocol is self._protocol
        if was_up:
            self._protocol = None
            self.up.clear()
            if self._ticker is not None:
                self._ticker.cancel()
            if self._closing:
                self.cause = cause
            else:
                self._note_down(cause)
        error = RedisUnavailable(cause)
        while protocol.waiting:
            future, _ = protocol.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if was_up:
            _notify(self.on_down)


def _notify(listeners: list[Callable[[], None]]) -> None:
    for listener in list(listeners):
        try:
            listener()
        except Exception:
            log.exception("a listener of the Redis link failed")


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {timeout:g} s while connecting"
    if isinstance(exc, ReplyError):
        return f"Redis refused the connection setup: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
