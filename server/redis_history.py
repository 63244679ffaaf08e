"""Room history in Redis, shared by every process (history.py says what it promises).

Each room has a hash `<prefix>h:<room>` holding its `epoch` and last `offset`, and a stream
`<prefix>s:<room>` of its last `size` events, whose entry ids are their offsets
(`42-0`). One script gives an event its position, stores it and publishes it, so the order
of the offsets is the order in which every process receives the events. A second script
reads the position and, for a rejoining socket, the events after its own. The hash lives
`META_TTL` after the room's last event or join; the stream `ttl` after its last event,
and each entry records when it was added, so no event older than `ttl` is replayed.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .history import META_TTL, HistorySettings, Position, Replay
from .redis_link import RedisLink
from .resp import ReplyError

# A new epoch is Redis's clock when the history begins (again): after a restart that lost
# it, it cannot repeat an earlier one.
_BEGIN = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  local now = redis.call('TIME')
  epoch = now[1] .. '.' .. now[2]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('DEL', KEYS[2])
end
"""

# KEYS: hash, stream. ARGV: channel, header, open frame, size, ttl ms, meta ttl ms.
_APPEND = _BEGIN + """
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local frame = ARGV[3] .. offset .. ',"epoch":"' .. epoch .. '"}'
local now = redis.call('TIME')
local at = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], offset .. '-0', 't', at, 'f', frame)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\n' .. offset .. ' ' .. epoch .. '\\n' .. frame)
return offset
"""

# KEYS: hash, stream. ARGV: since epoch ('' for none), since offset, ttl ms, meta ttl ms.
# Returns {epoch, offset, recovered (0/1, or -1 without since), frames}.
_REPLAY = _BEGIN + """
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
if ARGV[1] == '' then return {epoch, offset, -1, {}} end
local since = tonumber(ARGV[2])
if ARGV[1] ~= epoch or since > offset then return {epoch, offset, 0, {}} end
if since == offset then return {epoch, offset, 1, {}} end
local first = (since + 1) .. '-0'
local entries = redis.call('XRANGE', KEYS[2], first, '+')
if #entries == 0 or entries[1][1] ~= first then return {epoch, offset, 0, {}} end
local now = redis.call('TIME')
local oldest = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[3])
if tonumber(entries[1][2][2]) < oldest then return {epoch, offset, 0, {}} end
local frames = {}
for i, entry in ipairs(entries) do frames[i] = entry[2][4] end
return {epoch, offset, 1, frames}
"""


class RedisHistory:
    def __init__(self, link: RedisLink, prefix: str, settings: HistorySettings) -> None:
        self.link = link
        self.settings = settings
        self._hash_prefix = prefix + "h:"
        self._stream_prefix = prefix + "s:"
        self._ttl_ms = int(settings.ttl * 1000)
        self._meta_ttl_ms = int(max(META_TTL, settings.ttl) * 1000)

    async def append(self, room: str, channel: str, header: bytes, head: bytes) -> int:
        """Give an event its position, keep it and publish `header`, the position and the
        frame on `channel`; returns its offset.

        Raises:
            RedisUnavailable, ReplyError: nothing was published (or, if Redis stopped
                answering meanwhile, the outcome is unknown).
        """
        offset: int = await self._run(_APPEND, room, channel, header, head, self.settings.size,
                                      self._ttl_ms, self._meta_ttl_ms)
        return offset

    async def replay(self, room: str, since: Position | None) -> Replay:
        """The position of `room` now, and the events after `since` when all are kept."""
        epoch, offset, recovered, frames = await self._run(
            _REPLAY, room, "" if since is None else since.epoch, 0 if since is None else since.offset,
            self._ttl_ms, self._meta_ttl_ms)
        position = Position(epoch.decode(), offset)
        return Replay(position, list(frames), None if recovered < 0 else bool(recovered))

    async def _run(self, script: str, room: str, *args: bytes | str | int) -> Any:
        keys = (self._hash_prefix + room, self._stream_prefix + room)
        try:
            return await self.link.call("EVALSHA", _sha(script), 2, *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # Redis restarted (or flushed its scripts) since this process last sent it.
        return await self.link.call("EVAL", script, 2, *keys, *args)


_SHAS: dict[str, str] = {}


def _sha(script: str) -> str:
    sha = _SHAS.get(script)
    if sha is None:
        sha = _SHAS[script] = hashlib.sha1(script.encode()).hexdigest()
    return sha
