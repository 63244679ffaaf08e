"""Redis behind Sentinel: a real master, a replica and two Sentinels on loopback, and a
forced failover under two `run.py` processes with open sockets."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from server.testing import Closed
from tests.helpers import Browser, RunPy, free_port


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _until(check, what: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Poll a Redis-side condition (replication, Sentinel's view), which has no event to await."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


class SentinelGroup:
    def __init__(self, workdir: Path) -> None:
        self.master, self.replica = free_port(), free_port()
        self.sentinels = [free_port(), free_port()]
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinels) + "/mymaster/0"

    def start(self) -> None:
        server = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        for port, extra in ((self.master, []), (self.replica, ["--replicaof", "127.0.0.1", str(self.master)])):
            folder = self.workdir / str(port)  # a full resync writes an RDB file: each its own folder
            folder.mkdir()
            self.processes.append(_start([*server, "--port", str(port), "--dir", str(folder), *extra]))
        _until(lambda: Redis(port=self.replica).info("replication")["master_link_status"] == "up",
               "the replica is in sync")
        sentinel = shutil.which("redis-sentinel")
        for port in self.sentinels:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                            f"sentinel monitor mymaster 127.0.0.1 {self.master} 1\n"
                            "sentinel down-after-milliseconds mymaster 2000\n"
                            "sentinel failover-timeout mymaster 10000\n")
            command = [sentinel, str(conf)] if sentinel else ["redis-server", str(conf), "--sentinel"]
            self.processes.append(_start(command))
        for port in self.sentinels:
            _until(lambda: Redis(port=port).sentinel_slaves("mymaster"), "the Sentinels know the replica")

    def master_port(self) -> int:
        return int(Redis(port=self.sentinels[0]).sentinel_get_master_addr_by_name("mymaster")[1])

    def failover(self) -> None:
        _until(lambda: Redis(port=self.sentinels[0]).execute_command("SENTINEL FAILOVER mymaster"),
               "Sentinel accepts the failover")
        _until(lambda: self.master_port() == self.replica, "the replica is the master")
        _until(lambda: Redis(port=self.replica).info("replication")["role"] == "master", "promoted")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(10)


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path)
    try:
        group.start()
        yield group
    finally:
        group.stop()


async def test_a_failover_keeps_sockets_and_does_not_undo_a_logout(sentinel_group):
    url = sentinel_group.url
    async with RunPy("--redis", url) as a, RunPy("--redis", url) as b:
        async with Browser(a.url) as alice, Browser(a.url) as bob:
            await alice.login("alice")
            await bob.login("bob")
            on_a, on_b = await alice.socket(), await alice.socket(url=b.url)
            for socket in (on_a, on_b):
                await socket.request("join", {"room": "lobby"})
            assert await on_a.request("incr") == {"count": 1}

            # bob logs out right before the failover: the logout must not come back.
            bob_cookie = bob.cookie()
            assert (await bob.call("POST", "/api/logout"))[0] == 200
            marks = len(a.output), len(b.output)
            await asyncio.to_thread(sentinel_group.failover)  # the test's sockets go on meanwhile

            # Each process finds the new master by itself and keeps its sockets.
            for run, mark in zip((a, b), marks):
                await run.line(r"Redis at redis\+sentinel://.* reachable again", timeout=15, since=mark)
            assert await on_a.request("incr") == {"count": 2}  # written on the new master
            await on_a.request("chat", {"room": "lobby", "text": "after the failover"})
            assert (await on_b.receive("chat", timeout=10)).data["text"] == "after the failover"
            assert on_a.close_code is None and on_b.close_code is None

            async with Browser(a.url) as thief:
                thief.http.cookie_jar.update_cookies({c.split("=", 1)[0]: c.split("=", 1)[1]
                                                      for c in bob_cookie.split("; ")})
                with pytest.raises(Closed) as refused:
                    await thief.socket()
                assert refused.value.code == 4401
