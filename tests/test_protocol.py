"""The sans-I/O codec, from literal frames (protocol.md, "Frames")."""

import json
import subprocess
import sys

import pytest

from server.codes import ErrorCode
from server.errors import BadFrame
from server.protocol import MAX_ID, Ack, Event, encode_ack, encode_error, encode_error_ack, encode_event, parse_frame


def test_event_with_data_and_id():
    assert parse_frame('{"event": "chat", "data": {"room": "lobby"}, "id": 7}') == Event("chat", {"room": "lobby"}, 7)


def test_event_without_data_or_id():
    assert parse_frame('{"event": "whoami"}') == Event("whoami", None, None)


@pytest.mark.parametrize("data", ["1", '"text"', "[1, 2]", "null", "true", '{"a": {"b": []}}'])
def test_data_may_be_any_json_value(data):
    assert parse_frame(f'{{"event": "echo", "data": {data}}}').event == "echo"


def test_ack_with_data():
    assert parse_frame('{"ack": 3, "data": {"ok": true}}') == Ack(3, {"ok": True}, None)


def test_error_ack():
    frame = parse_frame('{"ack": 3, "error": {"code": "nope", "message": "no"}}')
    assert frame == Ack(3, None, {"code": "nope", "message": "no"})


@pytest.mark.parametrize("text, message", [
    ("not json", "not valid JSON"),
    ("", "not valid JSON"),
    ('{"event": "x", "data": NaN}', "not valid JSON"),
    ('{"event": "x", "data": 1e400}', "not valid JSON"),
    ('{"event": "x", "data": ' + "[" * 3000 + "]" * 3000 + "}", "nested too deeply"),
    ("[1]", "must be a JSON object"),
    ('"event"', "must be a JSON object"),
    ("{}", '"event"'),
    ('{"event": 5}', '"event"'),
    ('{"event": ""}', '"event"'),
    ('{"event": "' + "x" * 65 + '"}', '"event"'),
    ('{"event": "has space"}', '"event"'),
    ('{"event": "x", "id": 0}', "id must be"),
    ('{"event": "x", "id": -1}', "id must be"),
    ('{"event": "x", "id": 1.5}', "id must be"),
    ('{"event": "x", "id": "1"}', "id must be"),
    ('{"event": "x", "id": true}', "id must be"),
    ('{"event": "x", "id": null}', "id must be"),
    (f'{{"event": "x", "id": {MAX_ID + 1}}}', "id must be"),
    ('{"ack": "1"}', "ack must be"),
    ('{"ack": 1, "event": "x"}', "no \\\"event\\\""),
    ('{"ack": 1, "error": "bad"}', '"error" must be'),
    ('{"ack": 1, "error": {"code": 1, "message": "m"}}', '"error" must be'),
])
def test_bad_frames(text, message):
    with pytest.raises(BadFrame) as info:
        parse_frame(text)
    assert info.value.code is ErrorCode.BAD_FRAME
    assert message.replace("\\", "") in info.value.message


def test_a_bad_frame_with_a_valid_id_is_answered_by_ack():
    with pytest.raises(BadFrame) as info:
        parse_frame('{"event": 12, "id": 9}')
    assert info.value.id == 9


def test_an_invalid_id_is_never_used_for_the_answer():
    with pytest.raises(BadFrame) as info:
        parse_frame('{"event": "echo", "id": "9"}')
    assert info.value.id is None


def test_encoders():
    assert encode_event("count", {"count": 2}) == b'{"event":"count","data":{"count":2}}'
    assert encode_event("confirm", None, 4) == b'{"event":"confirm","data":null,"id":4}'
    assert encode_ack(4, [1]) == b'{"ack":4,"data":[1]}'
    assert encode_error_ack(4, ErrorCode.FORBIDDEN, "no") == b'{"ack":4,"error":{"code":"forbidden","message":"no"}}'
    assert encode_error("bad_frame", "m") == b'{"event":"error","data":{"code":"bad_frame","message":"m"}}'


def test_non_ascii_text_is_kept_as_is():
    assert encode_event("chat", "héllo ☃") == '{"event":"chat","data":"héllo ☃"}'.encode()


def test_what_orjson_cannot_write_exactly_is_written_by_the_stdlib():
    assert encode_ack(1, 2**70) == b'{"ack":1,"data":1180591620717411303424}'
    assert encode_ack(1, {1: "x"}) == b'{"ack":1,"data":{"1":"x"}}'
    assert encode_ack(1, "\ud800 é") == b'{"ack":1,"data":"\\ud800 \\u00e9"}'
    assert parse_frame(encode_ack(1, "\ud800").decode()) == Ack(1, "\ud800")


def test_the_codec_imports_no_aiohttp_nor_asyncio():
    code = "import sys, server.protocol; print(sorted(m for m in ('aiohttp', 'asyncio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _outcome(decode, text):
    try:
        return "ok", repr(decode(text))  # repr tells 1 from 1.0 and -0.0 from 0.0
    except RecursionError:
        return "too deep", None
    except ValueError:
        return "not JSON", None


def _random_value(rng, depth=0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1,
                           10**18, 10**19, 10**30, rng.randrange(-(10**25), 10**25)])
    if kind == 1:
        return rng.choice([0.0, -0.0, 1.5, 1e308, 5e-324, 1e-7, 123456789012345678901.0, rng.random() * 1e20])
    if kind == 2:
        return "".join(rng.choice(["a", "é", "\u2028", "\"", "\\", "\n", "\x00", "😀", "\ud800", "123"])
                       for _ in range(rng.randrange(6)))
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return rng.randrange(-1000, 1000)
    if kind in (6, 7):
        return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randrange(4))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def _corpus():
    import random

    rng = random.Random(20261202)
    fixed = ['{"a":18446744073709551615}', '{"a":18446744073709551616}', '{"a":-9223372036854775809}',
             '{"a":1e400}', '{"a":-1e400}', '{"a":NaN}', '{"a":Infinity}', '{"a":"\\ud800"}', '{"a":"\\udc00x"}',
             '{"a":1.0}', '{"a":1E2}', '{"a":-0}', '{"a":-0.0}', '{"a":1,"a":2}', '\ufeff{}', '{"a":"\x01"}',
             '[' * 2000 + ']' * 2000, '[' * 1000 + ']' * 1000, ' {"a" : [ 1 , 2 ] } ', '{"a":01}', '{"a":.5}',
             '{"a":1.}', '{"a":"x"} x', '', '{', '{"a":"\\u00e9"}', '{"a":"\\uD83D\\uDE00"}', '{"a":tru}',
             '{"id":9007199254740991}', '{"id":1.0}', '{"id":12345678901234567890123}', '"\\ud800"']
    for text in fixed:
        yield text
    for _ in range(3000):
        value = {"event": "echo", "data": _random_value(rng), "id": rng.randrange(1, 2**53)}
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5, separators=rng.choice([(",", ":"), (", ", ": ")]))
        if rng.random() < 0.3:  # a mutation: most are no longer JSON
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(["", "x", "]", "}", ",", "\"", "\\", "1", "e", "-"]) + text[at + 1:]
        yield text


def test_the_fast_reader_agrees_with_the_exact_one():
    from server import protocol

    for text in _corpus():
        assert _outcome(protocol._decode, text) == _outcome(protocol._decode_exactly, text), text[:200]
