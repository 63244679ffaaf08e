"""The codec's cost of reading a frame: orjson (with its exact-stdlib fallbacks) beside
the stdlib alone, for frames like the bench's echo and a few larger ones.

    python -m bench.codec            # prints a table, writes bench/results-codec.json
"""

from __future__ import annotations

import json
import platform
import timeit
from pathlib import Path

from server import protocol

FRAMES = {
    "echo (70 B)": '{"event":"echo","data":{"text":"hello world","seq":12345},"id":12345}',
    "chat (200 B)": json.dumps({"event": "chat", "id": 7, "data": {"room": "lobby", "text": "héllo " * 30}}),
    "list of 100 numbers": json.dumps({"event": "echo", "id": 1, "data": list(range(100000, 100100))}),
    "an id of 19 digits (stdlib path)": '{"event":"echo","data":1,"id":1234567890123456789}',
}


def per_call(fn: object, text: str, number: int = 50_000) -> float:
    return min(timeit.repeat(lambda: fn(text), number=number, repeat=5)) / number  # type: ignore[operator]


def main() -> None:
    rows = []
    print(f"{'frame':36} {'stdlib us':>10} {'orjson us':>10} {'ratio':>7}")
    for name, text in FRAMES.items():
        exact, fast = per_call(protocol._decode_exactly, text), per_call(protocol._decode, text)
        rows.append({"frame": name, "stdlib_us": exact * 1e6, "orjson_us": fast * 1e6})
        print(f"{name:36} {exact * 1e6:10.2f} {fast * 1e6:10.2f} {fast / exact:7.2f}")
    out = Path(__file__).resolve().parent / "results-codec.json"
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
