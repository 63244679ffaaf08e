"""Token buckets: how much of something a client may do, refilled over time. No I/O.

One bucket per key (a user, an address, a socket), created full and forgotten once it is
full again, so a million clients that came once cost nothing after a while.
"""

from __future__ import annotations

import time
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


class TokenBucket:
    """`burst` tokens at most, refilled at `rate` per second."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, cost: float = 1.0, now: float | None = None) -> float:
        """Take `cost` tokens; returns 0, or the seconds to wait before they are there (none taken)."""
        now = time.monotonic() if now is None else now
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= cost:
            self.tokens = tokens - cost
            return 0.0
        self.tokens = tokens
        return (cost - tokens) / self.rate if self.rate > 0 else float("inf")

    def wait(self, cost: float = 1.0, now: float | None = None) -> float:
        """The seconds until `cost` tokens are there (0: now); takes nothing."""
        now = time.monotonic() if now is None else now
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        if tokens >= cost:
            return 0.0
        return (cost - tokens) / self.rate if self.rate > 0 else float("inf")

    def give(self, cost: float = 1.0) -> None:
        """Give back tokens taken for something that turned out not to count."""
        self.tokens = min(self.burst, self.tokens + cost)

    def charge(self, cost: float, now: float) -> float:
        """Take `cost` tokens even if they are not there (a debt); returns the seconds until
        the debt is paid (0: none). A rate of 0 means no limit."""
        if self.rate <= 0:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - cost
        self.stamp = now
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class Buckets(Generic[K]):
    """A `TokenBucket(rate, burst)` per key."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: dict[K, TokenBucket] = {}

    def take(self, key: K, cost: float = 1.0) -> float:
        """Take `cost` tokens of `key`'s bucket; 0, or the seconds to wait (nothing taken)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._prune()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket.take(cost)

    def wait(self, key: K, cost: float = 1.0) -> float:
        """The seconds until `key` has `cost` tokens (0: now); takes nothing."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(cost)

    def give(self, key: K, cost: float = 1.0) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.give(cost)

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:  # every one of them is busy: start over
            self._buckets.clear()


class ReadBudget:
    """How fast a reader may go, in events and in bytes a second, with bursts of twice that."""

    __slots__ = ("_events", "_bytes")

    def __init__(self, events: float, bytes_: float) -> None:
        self._events = TokenBucket(events, 2 * events)
        self._bytes = TokenBucket(bytes_, 2 * bytes_)

    def charge(self, size: int, now: float) -> float:
        """Count one frame of `size` bytes; returns the seconds to wait before reading more."""
        return max(self._events.charge(1, now), self._bytes.charge(size, now))


class LoginThrottle:
    """Failed logins, limited per username and per client address.

    A login is refused before its password is checked (so a flood costs no hashing) once
    its address, or its username, has used up its failures; only failures count, so
    many right logins at once are never refused. An address that has logged in as a user
    before skips that user's limit: an attacker who guesses at alice's password from
    elsewhere slows down new logins of alice, never alice's own browsers, and only while
    the attack lasts (the buckets refill; nothing locks an account for good).

    Args:
        burst: failed attempts allowed at once, per username and per address.
        per_minute: failed attempts a minute once the burst is spent.
    """

    def __init__(self, burst: int = 10, per_minute: float = 10, *, max_keys: int = 100_000) -> None:
        self._users: Buckets[str] = Buckets(per_minute / 60, burst, max_keys=max_keys)
        self._addresses: Buckets[str] = Buckets(per_minute / 60, burst, max_keys=max_keys)
        self._known: set[tuple[str, str]] = set()
        self._max_keys = max_keys

    def wait(self, username: str, address: str) -> float:
        """0 when a login may be tried now, else the seconds to wait."""
        wait = self._addresses.wait(address)
        if not wait and (username, address) not in self._known:
            wait = self._users.wait(username)
        return wait

    def failed(self, username: str, address: str) -> None:
        self._addresses.take(address)
        if (username, address) not in self._known:
            self._users.take(username)

    def succeeded(self, username: str, address: str) -> None:
        """Remember that this address logs in as this user."""
        if len(self._known) >= self._max_keys:
            self._known.clear()
        self._known.add((username, address))
