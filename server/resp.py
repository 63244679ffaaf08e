"""RESP3, the Redis wire format: commands out, replies and pushes in. No I/O.

Only what `redis_link` needs: commands are arrays of bulk strings; replies are parsed
into Python values (bytes, int, float, bool, None, list, dict), errors into `ReplyError`
values (returned, not raised: a pipelined reader must keep its place in the stream), and
out-of-band messages (`>`: invalidations, pub/sub messages) into `Push` lists.
"""

from __future__ import annotations

from typing import Any

_CRLF = b"\r\n"


class ReplyError(Exception):
    """Redis answered a command with an error (e.g. `WRONGTYPE ...`, `NOAUTH ...`)."""


class Push(list[Any]):
    """An out-of-band RESP3 push, e.g. `[b"invalidate", [key, ...]]` or `[b"message", channel, data]`."""


def encode_command(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def parse_reply(buf: bytes | bytearray, pos: int) -> tuple[Any, int] | None:
    """Parse one RESP3 value at `pos`; returns (value, next position), or None if incomplete.

    Raises:
        ValueError: the bytes are not RESP3 (the connection can only be dropped).
    """
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
        return (ReplyError(value.decode(errors="replace")) if kind == b"!" else value), pos + size + 2
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
            return Push(items), pos
        return (dict(zip(items[::2], items[1::2])) if kind == b"%" else items), pos
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), pos
    if kind in (b":", b"("):
        return int(line), pos
    if kind == b"_":
        return None, pos
    if kind == b"#":
        return line == b"t", pos
    if kind == b",":
        return float(line), pos
    raise ValueError(f"unexpected RESP3 type {kind!r}")
