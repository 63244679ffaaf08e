"""Fixtures: a private redis-server, the app in both storages, browsers."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from redis import Redis

from server.app import HUB, make_app
from server.config import Settings
from tests.helpers import ROOT, Browser, free_port  # noqa: F401 (ROOT: for tests)

# LOOP=uvloop runs the suite on uvloop: the apps tests run in-process, and (through the
# environment) every `python run.py` they start. Unset, both use asyncio's own loop.
LOOP = os.environ.setdefault("LOOP", "asyncio")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any] | None:
    if LOOP == "uvloop":
        import uvloop

        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


class RedisServer:
    """A redis-server of the test run's own, on a free port; tests may stop and start it."""

    def __init__(self, workdir: Path, persist: bool = False) -> None:
        self.persist = persist  # keep the data across a stop and start (append-only file)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server, or REDIS_URL when set."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian package redis-server); or set REDIS_URL")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (its own browser download does not work here)."""
    from playwright.async_api import async_playwright
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        await browser.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which the test may stop and start."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    server = RedisServer(tmp_path, persist=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["cookie", "redis"])
def storage(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(storage: str, request: pytest.FixtureRequest) -> Settings:
    """Settings of a test app: the storage under test, a fixed key, a unique cookie name."""
    redis = request.getfixturevalue("redis_url") if storage == "redis" else None
    return Settings(
        redis_url=redis,
        session_key=Fernet.generate_key().decode(),
        # A cookie name of its own keeps each test's Redis keys apart, even on a shared REDIS_URL.
        cookie_name="s" + uuid.uuid4().hex[:12],
        heartbeat=0,
        session_check_interval=60,
    )


@pytest.fixture
def settings_for():  # type: ignore[no-untyped-def]
    """Settings of a Redis-backed test app on a given Redis URL."""

    def make(redis_url: str, **changes: object) -> Settings:
        return Settings(redis_url=redis_url, session_key=Fernet.generate_key().decode(), heartbeat=0,
                        session_check_interval=60, **changes)  # type: ignore[arg-type]

    return make


@pytest.fixture
def serve(aiohttp_server):  # type: ignore[no-untyped-def]
    """Start the app with `settings` changed by keyword; returns its base URL."""

    async def start(settings: Settings, *, setup=None, **changes: object) -> str:  # type: ignore[no-untyped-def]
        app = make_app(replace(settings, **changes))
        if setup is not None:
            setup(app[HUB])  # extra handlers of a test
        server = await aiohttp_server(app)
        return str(server.make_url("/"))

    return start


@pytest.fixture
async def base_url(serve, settings: Settings) -> str:  # type: ignore[no-untyped-def]
    return await serve(settings)


@pytest.fixture
async def browser(base_url: str) -> AsyncIterator[Browser]:
    async with Browser(base_url) as b:
        yield b


@pytest.fixture
async def alice(browser: Browser) -> Browser:
    await browser.login("alice")
    return browser


@pytest.fixture
async def make_browser(base_url: str) -> AsyncIterator:  # type: ignore[type-arg]
    """More browsers (cookie jars) against the same server."""
    made: list[Browser] = []

    async def make(origin: str | None = None) -> Browser:
        b = Browser(base_url, origin)
        made.append(b)
        return b

    yield make
    for b in made:
        await b.__aexit__()
