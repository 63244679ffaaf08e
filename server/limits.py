"""Token buckets: how much of something a client may do, refilled over time. No I/O.

One bucket per key (a user, an address, a socket), created full and forgotten once it is
full again, so a million clients that came once cost nothing after a while.
"""

from __future__ import annotations

import asyncio
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

    def full(self, now: float) -> bool:
        return self._events.full(now) and self._bytes.full(now)


class LoginThrottle:
    """Failed logins, limited per username and per client address.

    An attempt takes a token from its address's bucket before the password is checked, and
    a right one gives it back: so no more wrong passwords are ever checked for one address
    than its bucket holds, however many arrive at once, and a refused attempt costs no
    hashing. The username's bucket is looked at first too but taken from only when the
    password was wrong, so that many right logins of one user at once all go through. An address that has logged in as a user
    before skips that user's bucket (not the address's): an attacker who guesses at
    alice's password from elsewhere slows down new logins of alice, never alice's own
    browsers, and only while the attack lasts (buckets refill; nothing locks for good).

    Args:
        burst: failed attempts allowed at once, per username and per address (an address
            gets three times that: several people may share one behind a NAT).
        per_minute: failed attempts a minute once the burst is spent (the same factor).
    """

    def __init__(self, burst: int = 10, per_minute: float = 10, *, max_keys: int = 100_000) -> None:
        self._users: Buckets[str] = Buckets(per_minute / 60, burst, max_keys=max_keys)
        self._addresses: Buckets[str] = Buckets(3 * per_minute / 60, 3 * burst, max_keys=max_keys)
        self._known: set[tuple[str, str]] = set()
        self._max_keys = max_keys

    def attempt(self, username: str, address: str) -> float:
        """Count an attempt; 0 when it may go ahead, else the seconds to wait (not counted)."""
        if (username, address) not in self._known:
            wait = self._users.wait(username)
            if wait:
                return wait
        return self._addresses.take(address)

    def failed(self, username: str, address: str) -> None:
        """The password was wrong."""
        if (username, address) not in self._known:
            self._users.take(username)

    def undo(self, username: str, address: str) -> None:
        """The attempt was not made after all: it does not count."""
        self._addresses.give(address)

    def succeeded(self, username: str, address: str) -> None:
        """The attempt was right: it does not count, and this address is known for the user."""
        self.undo(username, address)
        if len(self._known) >= self._max_keys:
            self._known.clear()
        self._known.add((username, address))


class Tarpit:
    """Holds refused requests for a while before answering them.

    A client in a tight loop that is refused at once makes the server answer thousands of
    refusals a second, which takes the event loop from everyone else; held for `seconds`,
    each of its connections costs one cheap answer a second. At most `capacity` requests
    are held at a time; past that they are answered at once.
    """

    def __init__(self, seconds: float = 1.0, capacity: int = 1024) -> None:
        self.seconds = seconds
        self.capacity = capacity
        self.held = 0

    async def hold(self) -> None:
        if self.held >= self.capacity:
            return
        self.held += 1
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.held -= 1
