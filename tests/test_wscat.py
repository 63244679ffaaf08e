"""The README's wscat walkthrough, run as written against a real `python run.py`.

It needs `wscat` on PATH (`npm install -g wscat`; `.ci/run` installs it). wscat prints
close codes only in a terminal, so it runs in a pseudo-terminal here.
"""

import json
import os
import pty
import re
import select
import shutil
import subprocess
import time

from tests.helpers import ROOT, RunPy

README = (ROOT / "README.md").read_text()
SECTION = README.split("## Try it with wscat", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", SECTION, re.S)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def commands(block: str, port: int) -> list[str]:
    """Shell commands of a README block (continuation lines joined), on the test's port."""
    text = block.replace("\\\n", " ").replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.strip()]


class Terminal:
    """A command in a pseudo-terminal; `expect` waits for text in its output."""

    def __init__(self, command: str, cwd) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(["bash", "-c", command], cwd=cwd, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.output = ""

    def wait(self, done, what: str, timeout: float = 10.0) -> None:
        """Read output until `done()` holds."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, f"{what} did not appear in:\n{self.output}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.output += ANSI.sub("", os.read(self.master, 65536).decode())
                except OSError:
                    pass

    def expect(self, text: str) -> None:
        self.wait(lambda: text in self.output, repr(text))

    def received(self) -> list[str]:
        """The frames wscat printed as received (`< {...}`), in order."""
        return re.findall(r"< (\{.*\})", self.output.replace("\r", "\n"))

    def expect_frames(self, count: int) -> list[str]:
        self.wait(lambda: len(self.received()) >= count, f"{count} received frames")
        return self.received()

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self.master)


def steps(transcript: str) -> list[tuple[str | None, list[str]]]:
    """The transcript as (what the user types, the frames that answer it); the first step
    is the server's greeting, which no one typed."""
    result: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in transcript.splitlines():
        if line.startswith("> "):
            result.append((line[2:], []))
        elif line.startswith("< "):
            result[-1][1].append(line[2:])
    return result


def same_frame(expected: str, got: str) -> bool:
    """Equal but for the values that change every run (socket id, timestamps, epochs)."""
    def normal(text: str) -> object:
        return json.loads(re.sub(r'"(socket|ts|epoch)":("[^"]*"|\d+)', r'"\1":0', text))
    return normal(expected) == normal(got)


async def test_the_readme_walkthrough(tmp_path):
    assert shutil.which("wscat"), "wscat is not installed: npm install -g wscat (.ci/run does)"
    (login, transcript, http) = (BLOCKS[0][1], BLOCKS[1][1], BLOCKS[2][1])
    async with RunPy(env={"SESSION_KEY_FILE": str(tmp_path / "key")}) as server:
        curl_login, wscat = commands(login, server.port)
        out = subprocess.run(["bash", "-c", curl_login], cwd=tmp_path, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == {"user": {"id": 1, "name": "alice"}}

        terminal = Terminal(wscat, tmp_path)
        try:
            terminal.expect("Connected (press CTRL+C to quit)")
            expected: list[str] = []
            for typed, replies in steps(transcript):  # typed as a person would: line by line
                if typed is not None:
                    terminal.type(typed)
                expected += replies
                got = terminal.expect_frames(len(expected))
                assert len(got) == len(expected), got
                for want, line in zip(expected, got):
                    assert same_frame(want, line), (want, line)

            incr, logout = commands(http, server.port)
            assert subprocess.run(["bash", "-c", incr], cwd=tmp_path, capture_output=True, text=True).stdout == '{"count": 1}'
            assert same_frame('{"event":"count","data":{"count":1}}', terminal.expect_frames(len(expected) + 1)[-1])
            subprocess.run(["bash", "-c", logout], cwd=tmp_path, check=True, capture_output=True)
            terminal.expect('Disconnected (code: 4001, reason: "logged out")')
        finally:
            terminal.close()
