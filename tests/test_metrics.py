"""GET /metrics as an operator scrapes it (README.md, "Metrics"): each series moves by what happened."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families

from server.config import Settings
from server.metrics import expose_metrics
from server.sessions import CookieSessionBridge
from server.wiring import setup
from tests.conftest import ROOT
from tests.helpers import TIMEOUT, Browser, RunPy, expect_close, free_port, until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(url.rstrip("/") + "/metrics") as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "text/plain"
        text = await r.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(("session_sockets_" + name, frozenset(labels.items())), 0.0)


class Client:
    """One socket that keeps every frame it sends and gets, to know what the server counted."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.sent: list[str] = []
        self.got: list[str] = []
        self._ids = 0

    async def send(self, text: str) -> None:
        self.sent.append(text)
        await self.ws.send_str(text)

    async def receive(self) -> dict[str, Any] | None:
        msg = await asyncio.wait_for(self.ws.receive(), TIMEOUT)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return None
        self.got.append(msg.data)
        return json.loads(msg.data)

    async def ask(self, event: str, data: Any = None) -> dict[str, Any]:
        self._ids += 1
        await self.send(json.dumps({"event": event, "data": data, "id": self._ids}))
        while (frame := await self.receive()) is not None:
            if frame.get("ack") == self._ids:
                return frame
        raise AssertionError(f"closed before the ack of {event}")

    async def until_closed(self) -> int | None:
        while await self.receive() is not None:
            pass
        return self.ws.close_code


async def test_a_scripted_session_moves_each_counter_by_what_happened(redis_url, tmp_path):
    # Presence off: its announcements are published a moment after a join or a leave, and
    # would make the count of publishes depend on when the last scrape happens.
    async with RunPy("--metrics", "--redis", redis_url, "--presence", "off",
                     env={"SESSION_KEY_FILE": str(tmp_path / "key")}) as server, \
            Browser(server.url) as alice, Browser(server.url) as anonymous:
        await alice.login("alice")
        before = await scrape(server.url)

        first = Client(await alice.open())
        assert (await first.receive() or {})["event"] == "connected"
        second = Client(await alice.open())
        await second.receive()
        for n in range(3):
            assert (await first.ask("echo", n))["data"] == n
        assert (await first.ask("nope"))["error"]["code"] == "unknown_event"
        assert (await first.ask("join", {"room": "lobby"}))["data"]["room"] == "lobby"
        assert (await first.ask("chat", {"room": "lobby", "text": "hi"}))["data"] == {"ok": True}
        assert (await first.ask("fail"))["error"]["code"] == "internal"
        assert (await first.ask("confirm", {"question": "sure?", "timeout": 0.2}))["error"]["code"] == "timeout"
        await first.send("not json")
        assert (await first.receive() or {})["data"]["code"] == "bad_frame"

        during = await scrape(server.url)
        assert value(during, "open", storage="redis", authenticated="true") == 2
        assert value(during, "rooms", kind="public") == 1 and value(during, "room_members", kind="public") == 1
        assert value(during, "rooms", kind="user") == 1 and value(during, "room_members", kind="user") == 2

        await anonymous.open()  # accepted, then closed 4401: refused
        await expect_close(anonymous.sockets[-1], 4401)
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await anonymous.open(headers={"Origin": "https://elsewhere.example"})
        await second.ws.close()  # by the client, 1000
        assert (await alice.call("POST", "/api/logout"))[0] == 200
        assert await first.until_closed() == 4001  # by the server

        async def settled() -> Samples | None:
            now = await scrape(server.url)
            return now if value(now, "open", storage="redis", authenticated="true") == 0 else None

        after = await until(settled, "both sockets closed")

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("upgrades_accepted_total") == 2
    assert moved("upgrades_refused_total", reason="unauthorized") == 1
    assert moved("upgrades_refused_total", reason="forbidden_origin") == 1
    events = {("echo", "ok"): 3, ("unknown", "unknown_event"): 1, ("join", "ok"): 1, ("chat", "ok"): 1,
              ("fail", "internal"): 1, ("confirm", "timeout"): 1, ("unknown", "bad_frame"): 1}
    for (event, outcome), count in events.items():
        assert moved("events_total", event=event, outcome=outcome) == count, (event, outcome)
    total = sum(v for (name, _), v in after.items() if name == "session_sockets_events_total")
    assert total - sum(v for (name, _), v in before.items() if name == "session_sockets_events_total") == 9
    assert moved("event_duration_seconds_count", event="echo") == 3
    # It waited 0.2 s for the client: between the bounds 2**27 and 2**28 ns.
    assert moved("event_duration_seconds_bucket", event="confirm", le="0.134217728") == 0
    assert moved("event_duration_seconds_bucket", event="confirm", le="0.268435456") == 1
    assert 0.2 <= moved("event_duration_seconds_sum", event="confirm") < 0.268
    assert moved("closes_total", code="1000", by="client") == 1
    assert moved("closes_total", code="4001", by="server") == 1
    frames_in = first.sent + second.sent
    frames_out = first.got + second.got
    assert moved("frames_received_total") == len(frames_in) == 9
    assert moved("received_bytes_total") == sum(len(f) for f in frames_in)
    assert moved("frames_sent_total") == len(frames_out)
    assert moved("sent_bytes_total") == sum(len(f.encode()) for f in frames_out)
    assert moved("server_requests_total") == 1 and moved("server_request_timeouts_total") == 1
    assert moved("backplane_published_total") == 2  # the chat, and the logout's disconnect
    # Every handled event reloaded the session (7, all from the cache), and so did the
    # second upgrade and the logout route; the first upgrade read Redis (the login wrote it).
    assert moved("tracking_cache_hits_total") >= 9 and moved("tracking_cache_misses_total") >= 1
    assert moved("store_errors_total", op="read") == 0 and value(after, "backplane_up") == 1


async def test_ten_thousand_unknown_event_names_add_no_series(serve):
    url = await serve(Settings(session_key=Fernet.generate_key().decode(), heartbeat=0, metrics=True,
                               rate_limit=0, rate_limit_bytes=0))
    async with Browser(url) as b:
        await b.login("alice")
        before = await scrape(url)
        ws = await b.connect()
        for i in range(1, 10_001):
            await ws.send_str(f'{{"event":"made-up-{i}","id":{i}}}')
        codes: Counter[str] = Counter()
        while sum(codes.values()) < 10_000:
            frame = json.loads((await asyncio.wait_for(ws.receive(), TIMEOUT)).data)
            codes[frame["error"]["code"]] += 1
        assert codes == {"unknown_event": 10_000}
        after = await scrape(url)
    assert value(after, "events_total", event="unknown", outcome="unknown_event") == 10_000
    assert value(after, "frames_received_total") == 10_000
    labels = {v for _, pairs in after for _, v in pairs}
    assert not any(v.startswith("made-up") for v in labels)
    assert len(after) - len(before) < 30  # the series of one socket's first events, not 10,000


async def test_a_redis_outage_shows_as_store_errors_and_the_backplane_down(redis_server, tmp_path):
    async with RunPy("--metrics", "--redis", redis_server.url, "--redis-timeout", "0.5",
                     env={"SESSION_KEY_FILE": str(tmp_path / "key")}) as server, Browser(server.url) as b:
        await b.login("alice")
        ws = Client(await b.open())
        await ws.receive()
        before = await scrape(server.url)
        redis_server.stop()

        async def down() -> Samples | None:
            now = await scrape(server.url)
            return now if value(now, "backplane_up") == 0 else None

        await until(down, "the backplane reported down")
        assert (await ws.ask("echo", 1))["error"]["code"] == "unavailable"
        after = await scrape(server.url)
    assert value(after, "store_errors_total", op="read") - value(before, "store_errors_total", op="read") == 1
    assert value(after, "events_total", event="echo", outcome="unavailable") == 1
    assert value(after, "tracking_cache_flushes_total") - value(before, "tracking_cache_flushes_total") == 1


async def test_metrics_on_a_port_of_their_own(tmp_path):
    port = free_port()
    async with RunPy("--metrics-port", str(port), env={"SESSION_KEY_FILE": str(tmp_path / "key")}) as server:
        async with aiohttp.ClientSession() as http, http.get(server.url + "metrics") as r:
            assert r.status == 404  # not on the main port
        samples = await scrape(f"http://127.0.0.1:{port}")
    assert value(samples, "open", storage="cookie", authenticated="true") == 0
    assert ("process_resident_memory_bytes", frozenset()) in samples


async def test_metrics_are_off_unless_asked_for(serve):
    url = await serve(Settings(session_key=Fernet.generate_key().decode(), heartbeat=0))
    async with aiohttp.ClientSession() as http, http.get(url + "metrics") as r:
        assert r.status == 404


def test_workers_without_a_metrics_port_is_a_usage_error():
    done = subprocess.run([sys.executable, "run.py", "--workers", "2", "--redis", "redis://127.0.0.1:1/0",
                           "--metrics"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--metrics with --workers 2 needs --metrics-port" in done.stderr
    assert "Traceback" not in done.stderr


def test_without_prometheus_client_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    app = web.Application()
    hub = setup(app, CookieSessionBridge(Fernet.generate_key()))
    with pytest.raises(ImportError, match=r"pip install 'aiohttp-session-sockets\[metrics\]'"):
        expose_metrics(app, hub)
