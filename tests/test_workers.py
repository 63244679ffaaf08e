"""`python run.py --workers N`: N processes on one port, restarted when one dies, stopped together."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.helpers import Browser, RunPy


def test_more_than_one_worker_needs_redis():
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run([sys.executable, "run.py", "--workers", "2"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "--workers 2 needs --redis" in done.stderr and "Traceback" not in done.stderr


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


async def test_workers_share_one_port_restart_and_stop_together(redis_url):
    async with RunPy("--redis", redis_url, "--workers", "2") as server:
        assert "2 workers" in server.log()
        workers = children(server.process.pid)
        assert len(workers) == 2
        async with Browser(server.url) as b:
            await b.login("alice")
            # Connect until each worker holds a socket (the kernel spreads connections).
            on: dict[str, list] = {"1": [], "2": []}
            for _ in range(40):
                socket = await b.socket()
                worker = (await server.line(rf"\[worker (\d)\] server.transport: socket {socket.id} connected"))[1]
                on[worker].append(socket)
                if on["1"] and on["2"]:
                    break
            assert on["1"] and on["2"], "every socket went to one worker"
            # They cooperate through Redis: a chat on one worker reaches the other.
            one, two = on["1"][0], on["2"][0]
            for socket in (one, two):
                await socket.request("join", {"room": "across"})
            await one.request("chat", {"room": "across", "text": "hello, other worker"})
            assert (await two.receive("chat")).data["text"] == "hello, other worker"

            # A worker that dies takes its sockets with it; the other's stay; it is started again.
            pid_of_1 = next(pid for pid in workers if "WORKER=1\n" in _environ(pid))
            mark = len(server.output)
            os.kill(pid_of_1, signal.SIGKILL)
            assert await one.wait_closed() == 1006
            assert await two.request("echo", "still here") == "still here"
            await server.line(rf"worker 1 \(pid {pid_of_1}\) exited with signal SIGKILL; starting it again", since=mark)
            await server.line(r"\[worker 1\] server.app: sessions in Redis", timeout=10, since=mark)
            assert len(children(server.process.pid) - {pid_of_1}) == 2
            mark = len(server.output)
            for _ in range(40):  # the new worker 1 takes connections
                socket = await b.socket()
                line = rf"\[worker (\d)\] server.transport: socket {socket.id} connected"
                if (await server.line(line, since=mark))[1] == "1":
                    break
            else:
                raise AssertionError("the restarted worker took none of 40 connections")

            # SIGTERM to the supervisor: every socket of every worker gets 1001, nothing is left.
            stopped = asyncio.create_task(server.stop())
            assert await two.wait_closed(timeout=15) == 1001
            await stopped
            assert server.process.returncode == 0
            assert not children(server.process.pid)


def _environ(pid: int) -> str:
    return (Path("/proc") / str(pid) / "environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
