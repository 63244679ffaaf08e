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

    def expect(self, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while pattern not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} did not appear in:\n{self.output}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.output += ANSI.sub("", os.read(self.master, 65536).decode())
                except OSError:
                    pass
        return self.output

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self.master)


def frames(transcript: str, mark: str) -> list[str]:
    return [line[2:] for line in transcript.splitlines() if line.startswith(mark + " ")]


def same_frame(expected: str, got: str) -> bool:
    """Equal but for the values that change every run (socket id, timestamps)."""
    def normal(text: str) -> object:
        return json.loads(re.sub(r'"(socket|ts)":("[^"]*"|\d+)', r'"\1":0', text))
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
            replies = frames(transcript, "<")
            terminal.expect('"event":"connected"')
            for typed in frames(transcript, ">"):
                terminal.type(typed)
            for reply in replies:
                terminal.expect(reply.split('"data"')[0])  # each reply's opening, in the output
            got = [line.strip()[2:] for line in terminal.output.splitlines() if line.strip().startswith("< ")]
            assert len(got) == len(replies)
            for expected, line in zip(replies, got):
                assert same_frame(expected, line), (expected, line)

            incr, logout = commands(http, server.port)
            assert subprocess.run(["bash", "-c", incr], cwd=tmp_path, capture_output=True, text=True).stdout == '{"count": 1}'
            terminal.expect('< {"event":"count","data":{"count":1}}')
            subprocess.run(["bash", "-c", logout], cwd=tmp_path, check=True, capture_output=True)
            terminal.expect('Disconnected (code: 4001, reason: "logged out")')
        finally:
            terminal.close()
