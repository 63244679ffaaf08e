"""Sans-I/O codec of wire protocol v1 (protocol.md, "Frames").

It parses one text frame into an `Event` or an `Ack` and serializes the frames the server
sends. It knows nothing of aiohttp or asyncio, so a client can reuse it as it is.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from .codes import ErrorCode
from .errors import BadFrame

# Ids travel through JavaScript clients, whose integers are exact only up to 2**53 - 1.
MAX_ID = 2**53 - 1
EVENT_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


@dataclass(frozen=True, slots=True)
class Event:
    """A named event; `id` is set when the sender wants an ack."""

    event: str
    data: Any = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to an event that carried `id`; `error` is set for an error ack."""

    ack: int
    data: Any = None
    error: dict[str, str] | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: no frame the server sends could carry it back
        raise ValueError(f"{text[:20]} is out of range")
    return value


# orjson reads frames, two to four times faster than the stdlib, except where the two
# would not agree: a frame with a run of 19 digits (it may hold an integer past 64 bits,
# which orjson reads as a float), one with many lists and objects (orjson's depth limit is
# not the stdlib's) and a frame orjson refuses (the stdlib accepts lone surrogate escapes,
# and gives the error answers: not JSON, out of range, nested too deeply) are read by the
# stdlib, which keeps integers of any size exactly.
# orjson writes frames, several times faster; what it cannot write exactly (integers past
# 64 bits, non-string keys, lone surrogates) goes through the stdlib, which escapes
# non-ASCII text there so that the frame stays valid UTF-8. (orjson writes NaN and
# infinities as null; no client frame can carry them.)
_decode_exactly = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode
_encode_exactly = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
# Digits to "0", "[" and "{" to "[", every other byte to " ": one C pass over the frame
# finds both a long number and the number of containers (a regular expression costs more
# than parsing the frame).
_SHAPE = bytes(48 if 48 <= b <= 57 else 91 if b in (91, 123) else 32 for b in range(256))
_LONG_NUMBER = b"0" * 19
_FEW_CONTAINERS = 256


def _decode(text: str) -> Any:
    raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate: orjson refuses it, the stdlib decides
    shape = raw.translate(_SHAPE)
    if _LONG_NUMBER not in shape and shape.count(b"[") < _FEW_CONTAINERS:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return _decode_exactly(text)


def _encode(frame: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(frame)
    except TypeError:
        return _encode_exactly(frame).encode()


def is_valid_id(value: Any) -> bool:
    return type(value) is int and 0 < value <= MAX_ID


def parse_frame(text: str) -> Event | Ack:
    """Parse one text frame.

    Raises:
        BadFrame: the frame is not a JSON object of protocol v1. Its `id` is set when the
            frame carried a valid `id`, so the problem can be answered with an error ack.
    """
    try:
        frame = _decode(text)
    except RecursionError:
        raise BadFrame("frame is nested too deeply") from None
    except ValueError:  # also numbers out of range, and integers of more than 4300 digits
        raise BadFrame("frame is not valid JSON") from None
    if type(frame) is not dict:
        raise BadFrame("frame must be a JSON object")

    if "ack" in frame:
        return _parse_ack(frame)

    id = frame.get("id")
    if id is not None or "id" in frame:
        if not is_valid_id(id):
            raise BadFrame(f"id must be an integer from 1 to {MAX_ID}")
    event = frame.get("event")
    if type(event) is not str or EVENT_NAME.fullmatch(event) is None:
        raise BadFrame(
            'a frame needs "event": 1 to 64 characters of A-Za-z0-9_.:- (or "ack")', id=id
        )
    return Event(event, frame.get("data"), id)


def _parse_ack(frame: dict[str, Any]) -> Ack:
    ack = frame["ack"]
    if not is_valid_id(ack):
        raise BadFrame(f"ack must be an integer from 1 to {MAX_ID}")
    if "event" in frame or "id" in frame:
        raise BadFrame('an ack frame carries no "event" or "id"')
    error = frame.get("error")
    if error is not None and not (
        type(error) is dict
        and type(error.get("code")) is str
        and type(error.get("message")) is str
    ):
        raise BadFrame('"error" must be an object with string "code" and "message"')
    return Ack(ack, frame.get("data"), error)


def encode_event(event: str, data: Any = None, id: int | None = None) -> bytes:
    """Serialize an event; with `id` it is a server request that waits for an ack."""
    if id is None:
        return _encode({"event": event, "data": data})
    return _encode({"event": event, "data": data, "id": id})


def open_room_event(event: str, data: Any, room: str) -> bytes:
    """An event to a room kept in history, its position left open: `close_room_event`
    completes it once the position is known (in Redis, a script does the same)."""
    return _encode({"event": event, "data": data, "room": room, "offset": 0})[:-len(b"0}")]


def close_room_event(head: bytes, offset: int, epoch: str) -> bytes:
    """Complete `open_room_event`'s frame: `..."room":"lobby","offset":42,"epoch":"..."}`."""
    return b'%s%d,"epoch":"%s"}' % (head, offset, epoch.encode())


def encode_ack(id: int, data: Any = None) -> bytes:
    return _encode({"ack": id, "data": data})


def encode_error_ack(id: int, code: ErrorCode | str, message: str) -> bytes:
    return _encode({"ack": id, "error": {"code": _value(code), "message": message}})


def encode_error(code: ErrorCode | str, message: str) -> bytes:
    """Serialize the `error` event that answers a frame that carried no valid `id`."""
    return _encode({"event": "error", "data": {"code": _value(code), "message": message}})


def _value(code: ErrorCode | str) -> str:
    return code.value if isinstance(code, ErrorCode) else code
