"""The process's connection to Redis (server/redis_link.py), against a real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest
from redis.asyncio import Redis

from server.redis_link import RedisAddress, RedisLink, RedisUnavailable
from server.resp import ReplyError
from tests.helpers import free_port


def test_urls_name_host_port_db_credentials_tls_and_unix_sockets():
    assert RedisAddress.from_url("redis://127.0.0.1:6380/2") == RedisAddress("127.0.0.1", 6380, db=2)
    assert RedisAddress.from_url("redis://:s%40cret@h") == RedisAddress("h", 6379, password="s@cret")
    assert RedisAddress.from_url("rediss://u:p@h:1/0").tls
    assert RedisAddress.from_url("unix:///run/redis.sock?db=3") == RedisAddress(path="/run/redis.sock", db=3)
    assert "s@cret" not in str(RedisAddress.from_url("redis://:s%40cret@h"))  # logs never show it
    for bad in ("http://h", "redis://", "redis://h/x", "unix://"):
        with pytest.raises(ValueError, match="not a Redis URL"):
            RedisAddress.from_url(bad)


@pytest.fixture
async def link(redis_url):
    link = RedisLink.from_url(redis_url)
    await link.start()
    assert link.up.is_set()
    yield link
    await link.close()


async def test_a_burst_of_5000_commands_is_answered_in_order(link):
    await link.call("DEL", "burst")
    replies = await asyncio.gather(*(link.call("INCR", "burst") for _ in range(5000)))
    assert replies == list(range(1, 5001))


async def test_an_error_reply_fails_its_command_only(link):
    await link.call("SET", "plain", "x")
    results = await asyncio.gather(link.call("HGET", "plain", "f"), link.call("GET", "plain"),
                                   return_exceptions=True)
    assert isinstance(results[0], ReplyError) and "WRONGTYPE" in str(results[0])
    assert results[1] == b"x"


async def test_messages_of_a_subscribed_channel_are_handed_over_again_after_a_restart(redis_server):
    link = RedisLink.from_url(redis_server.url)
    got: asyncio.Queue[bytes] = asyncio.Queue()
    await link.start()
    try:
        await link.subscribe("news", got.put_nowait)
        publisher = Redis.from_url(redis_server.url)
        await publisher.publish("news", b"one")
        assert await asyncio.wait_for(got.get(), 5) == b"one"
        await publisher.aclose()
        redis_server.stop()
        redis_server.start()
        await asyncio.wait_for(link.up.wait(), 5)  # up again means subscribed again
        publisher = Redis.from_url(redis_server.url)
        await publisher.publish("news", b"two")
        assert await asyncio.wait_for(got.get(), 5) == b"two"
        await publisher.aclose()
    finally:
        await link.close()


async def test_a_frozen_redis_fails_every_waiting_command_within_the_bound(redis_server):
    link = RedisLink.from_url(redis_server.url, timeout=0.6)
    lost = asyncio.Event()
    link.on_down.append(lost.set)
    await link.start()
    try:
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        waiting = [link.call("PING") for _ in range(100)]
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, RedisUnavailable) for r in results)
        assert "no answer from Redis within 0.6 s" in str(results[0])
        assert time.monotonic() - started < 0.6 * 4 / 3 + 0.3
        assert lost.is_set() and not link.up.is_set()
        with pytest.raises(RedisUnavailable):
            link.call("PING")  # at once, while it is down
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    await asyncio.wait_for(link.up.wait(), 5)
    assert await link.call("PING") == b"PONG"
    await link.close()


async def test_a_unix_socket_url_reaches_redis(tmp_path):
    path = tmp_path / "redis.sock"
    server = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(path), "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        link = RedisLink.from_url(f"unix://{path}?db=1", timeout=5)
        async with asyncio.timeout(10):
            while not path.exists():  # redis-server creates the socket when it is ready
                await asyncio.sleep(0.02)
            await link.start()
            await link.up.wait()
        assert await link.call("SET", "k", "v") == b"OK"
        assert (await link.call("CLIENT", "INFO")).count(b"db=1") == 1
        await link.close()
    finally:
        server.terminate()
        server.wait(10)


async def test_a_rediss_url_speaks_tls_and_checks_the_certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    for _ in range(3):  # a free port may be taken by an outgoing connection before redis-server binds it
        port = free_port()
        server = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--tls-cert-file",
                                   str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                                   "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
                                   "--dir", str(tmp_path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if await _listening(server, port):
            break
    else:
        raise AssertionError("redis-server did not start with TLS: " + server.stdout.read())
    try:
        trusted = RedisLink.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", timeout=5)
        await trusted.start()
        await asyncio.wait_for(trusted.up.wait(), 10)  # it retries until redis-server listens
        assert await trusted.call("PING") == b"PONG"
        await trusted.close()
        untrusted = RedisLink.from_url(f"rediss://127.0.0.1:{port}/0", timeout=1)
        await untrusted.start()
        assert not untrusted.up.is_set() and "CERTIFICATE_VERIFY_FAILED" in untrusted.cause
        await untrusted.close()
    finally:
        server.terminate()
        server.wait(10)


async def _listening(server: subprocess.Popen, port: int) -> bool:  # type: ignore[type-arg]
    """Whether redis-server accepts connections on `port` (False once it has exited)."""
    async with asyncio.timeout(10):
        while server.poll() is None:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return True
    return False
