"""Reads of Redis keys that Redis itself keeps fresh: a cache invalidated by client tracking.

A per-message session reload that asks Redis every time costs a round trip per message,
more than the rest of the message's work. Instead, keys are read through the process's
`RedisLink`, which has `CLIENT TRACKING` on (RESP3): Redis remembers which keys it served
on that connection and pushes an `invalidate` message on that same connection as soon as
any client, in any process, changes or deletes one of them. A cached value is therefore
used only until Redis says it changed, and a reload costs a dictionary lookup.

Why a reload still sees every change that completed before the message was sent:

* Redis queues the invalidation for this connection while it executes the write, before
  it answers the writer, so the push is on its way here before the writer's HTTP response
  (and the client's next websocket frame) can be.
* The push is applied in `data_received`, in the same event-loop turn that reads it from
  the kernel, and a websocket frame's handler runs at least one turn after the frame is
  read: a push that arrived first is applied first.
* Replies and pushes come in one ordered stream, so a GET's value is cached at the point
  of the stream where it was read (`on_reply`), and a later push removes it.
* Writes made by this process drop the key at once (`forget`), without waiting for Redis.
* While the link is down, nothing is served from the cache: `get` raises
  `RedisUnavailable`. The cache is emptied whenever the link goes down, because pushes may
  have been lost, and the link goes down when Redis has not answered a PING within its
  timeout: a process cut off from Redis stops trusting its cache within
  `timeout * 4 / 3` seconds (protocol.md, "Sessions").
"""

from __future__ import annotations

import enum
from typing import Any

from .redis_link import RedisLink, RedisUnavailable
from .resp import Push

__all__ = ["MISSING", "Missing", "TrackingCache", "RedisUnavailable"]


class Missing(enum.Enum):
    """Not in the cache (None is a cached "no such key")."""

    MISSING = "missing"


MISSING = Missing.MISSING


class TrackingCache:
    """Values of Redis keys, cached until Redis says they changed.

    Args:
        link: a link created with `tracking=True`.
        max_entries: past this many cached keys, the cache starts over (it holds one key per
            session in use, so this bounds memory, not correctness).
    """

    def __init__(self, link: RedisLink, *, max_entries: int = 100_000) -> None:
        if not link.tracking:
            raise ValueError("a TrackingCache needs a RedisLink created with tracking=True")
        self._link = link
        self._max_entries = max_entries
        self._values: dict[bytes, bytes | None] = {}
        # Counts `forget` calls: a GET sent before one may have read the old value, so its
        # answer is returned but not cached.
        self.writes = 0
        # Read by the metrics (server/metrics.py).
        self.hits = self.misses = self.flushes = 0
        link.on_push.append(self._pushed)
        link.on_down.append(self._flush)

    async def get(self, key: str) -> bytes | None:
        """The value of `key`, from the cache when Redis has not said it changed since.

        Raises:
            RedisUnavailable: Redis is unreachable.
        """
        name = key.encode()
        if not self._link.up.is_set():
            raise RedisUnavailable(self._link.cause or "not connected to Redis")
        try:
            value = self._values[name]
        except KeyError:
            pass
        else:
            self.hits += 1
            return value
        self.misses += 1
        writes = self.writes

        def store(value: Any) -> None:
            if writes == self.writes:
                if len(self._values) >= self._max_entries:
                    self._flush()
                self._values[name] = value

        read: bytes | None = await self._link.call(b"GET", name, on_reply=store)
        return read

    def cached(self, key: str) -> bytes | None | Missing:
        """The cached value of `key` without waiting, or MISSING: then `get` it.

        Raises:
            RedisUnavailable: Redis is unreachable.
        """
        if not self._link.up.is_set():
            raise RedisUnavailable(self._link.cause or "not connected to Redis")
        value = self._values.get(key.encode(), MISSING)
        if value is not MISSING:
            self.hits += 1
        return value

    def forget(self, key: str) -> None:
        """Drop `key` from the cache (this process just wrote it)."""
        self.writes += 1
        self._values.pop(key.encode(), None)

    def __len__(self) -> int:
        return len(self._values)

    def _flush(self) -> None:
        self.flushes += 1
        self._values.clear()

    def _pushed(self, push: Push) -> None:
        if len(push) < 2 or push[0] != b"invalidate":
            return
        if push[1] is None:  # FLUSHALL / FLUSHDB, or Redis's tracking table overflowed
            self._flush()
            return
        for key in push[1]:
            self._values.pop(key, None)
