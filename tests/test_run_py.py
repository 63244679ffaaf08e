"""`python run.py` as a user starts it: a real process, real sockets, SIGTERM."""

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys

from cryptography.fernet import Fernet

from tests.conftest import ROOT
from tests.helpers import Browser, RunPy, call, expect_close, expect_event


def test_help_lists_every_option():
    out = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    for option in ("--host", "--port", "--redis", "--session-max-age", "--allowed-origin", "--max-message-size",
                   "--secure-cookies", "--heartbeat", "--log-level", "HOST", "PORT", "REDIS_URL", "SESSION_MAX_AGE",
                   "ALLOWED_ORIGINS", "MAX_MESSAGE_SIZE", "SECURE_COOKIES", "HEARTBEAT", "LOG_LEVEL"):
        assert option in out


def test_a_bad_session_key_is_a_clear_error():
    env = {**os.environ, "SESSION_KEY": "not-a-key"}
    done = subprocess.run([sys.executable, "run.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "SESSION_KEY must hold a Fernet key" in done.stderr
    assert "Traceback" not in done.stderr


async def test_cookie_storage_end_to_end_and_sigterm_closes_with_1001(tmp_path):
    key_file = tmp_path / "key"
    async with RunPy(env={"SESSION_KEY_FILE": str(key_file)}) as server:
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert any("generated a session key" in line for line in server.output)
        async with Browser(server.url) as b:
            await b.login("alice")
            ws = await b.connect()
            assert (await call(ws, "whoami"))["user"] == {"id": 1, "name": "alice"}
            await b.call("POST", "/api/incr")
            assert await expect_event(ws, "count") == {"count": 1}
            closed = asyncio.create_task(expect_close(ws, 1001))
            took = await server.stop(signal.SIGTERM)
            assert await closed == "server shutting down"
            cookie = b.cookie()
        assert took < 5 and server.process.returncode == 0
        log = "".join(server.output)
        assert "connected: user 1" in log and "closed: code 1001" in log
        assert cookie.split("=", 1)[1] not in log  # no secret in the log


async def test_a_key_file_others_can_read_is_used_with_a_warning(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(Fernet.generate_key().decode())
    key_file.chmod(0o644)
    async with RunPy(env={"SESSION_KEY_FILE": str(key_file)}) as server:
        pass
    assert any("can be read by other users (mode 644)" in line for line in server.output)


async def test_the_key_file_keeps_everyone_logged_in_across_restarts(tmp_path):
    env = {"SESSION_KEY_FILE": str(tmp_path / "key")}
    async with Browser("http://127.0.0.1:1/") as b:
        async with RunPy(env=env) as first:
            b.base_url = first.url.rstrip("/")
            await b.login("bob")
        async with RunPy(env=env) as second:
            b.base_url = second.url.rstrip("/")
            assert (await b.call("GET", "/api/me"))[1] == {"user": {"id": 2, "name": "bob"}, "count": 0}
            ws = await b.connect()
            assert ws.connected["user"]["name"] == "bob"


async def test_redis_storage_end_to_end(redis_url):
    async with RunPy("--redis", redis_url, env={"SESSION_KEY": Fernet.generate_key().decode()}) as server:
        async with Browser(server.url) as b:
            assert (await b.call("GET", "/healthz"))[0] == 200
            await b.login("alice")
            tab1, tab2 = await b.connect(), await b.connect()
            await b.call("POST", "/api/incr")
            assert await call(tab1, "incr") == {"count": 2}
            assert (await b.call("POST", "/api/incr"))[1] == {"count": 3}
            await b.call("POST", "/api/logout")
            await expect_close(tab1, 4001)
            await expect_close(tab2, 4001)
        assert "sessions in Redis" in "".join(server.output)


async def test_options_from_environment_variables(tmp_path):
    env = {"SESSION_KEY_FILE": str(tmp_path / "key"), "MAX_MESSAGE_SIZE": "100", "ALLOWED_ORIGINS": "http://a.example"}
    async with RunPy(env=env) as server:
        async with Browser(server.url, origin="http://a.example") as b:
            await b.login("alice")
            ws = await b.connect()
            await ws.send_str('{"event": "echo", "data": "%s"}' % ("x" * 100))
            await expect_close(ws, 1009)


def test_a_bad_number_in_the_environment_is_a_usage_error():
    env = {**os.environ, "PORT": "abc"}
    out = subprocess.run([sys.executable, str(ROOT / "run.py")], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "--port: invalid int value: 'abc'" in out.stderr
    assert "Traceback" not in out.stderr


async def test_the_event_loop_is_chosen_by_option_and_environment(tmp_path):
    env = {"SESSION_KEY": Fernet.generate_key().decode()}
    for args, loop_env, expected in [(("--loop", "asyncio"), "uvloop", "asyncio loop"),
                                     (("--loop", "uvloop"), "asyncio", "uvloop loop"),
                                     ((), "uvloop", "uvloop loop")]:
        async with RunPy(*args, env={**env, "LOOP": loop_env}) as server:
            async with Browser(server.url) as b:
                await b.login("alice")
                async with await b.socket() as socket:
                    assert await socket.request("echo", "on any loop") == "on any loop"
            assert expected in server.log()


async def test_a_client_that_closes_during_a_server_request_leaves_its_rooms_at_once():
    async with RunPy(env={"SESSION_KEY": Fernet.generate_key().decode()}) as server:
        async with Browser(server.url) as b:
            await b.login("alice")
            leaving, staying = await b.socket(), await b.socket()
            await leaving.request("join", {"room": "rx"})
            await leaving.emit("confirm", {"question": "still there?", "timeout": 60})
            await leaving.receive("confirm")  # the handler now waits for this socket's answer
            await leaving.close()
            # The server learns of the close at once, not when the 60 s request times out.
            deadline = asyncio.get_running_loop().time() + 5
            while (await staying.request("join", {"room": "rx"}))["members"] != 1:
                assert asyncio.get_running_loop().time() < deadline, "the closed socket is still in its room"
                await staying.request("leave", {"room": "rx"})


async def test_json_logs_carry_the_facts_of_each_line_and_no_secret():
    async with RunPy("--log-format", "json", env={"SESSION_KEY": Fernet.generate_key().decode()}) as server:
        async with Browser(server.url) as b:
            await b.login("alice")
            socket = await b.socket()
            await socket.close()
            await server.line(rf'"message": "socket {socket.id} closed')
            cookie = b.cookie()
        async with Browser(server.url) as stranger:
            await stranger.open()  # no login: refused with 4401
            await server.line(r'"code": 4401')
        lines = [json.loads(line) for line in server.output if line.startswith("{")]
        assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
        connected = next(line for line in lines if line["message"].startswith(f"socket {socket.id} connected"))
        assert (connected["socket"], connected["user"]) == (socket.id, 1) and connected["remote"] == "127.0.0.1"
        closed = next(line for line in lines if line["message"].startswith(f"socket {socket.id} closed"))
        assert (closed["socket"], closed["user"], closed["code"]) == (socket.id, 1, 1000)
        refused = next(line for line in lines if line.get("code") == 4401)
        assert refused["reason"] == "login required"
        assert cookie.split("=", 1)[1] not in server.log()  # never the session's cookie
