"""Several processes of one server on one port: started, restarted when one dies, stopped together.

    sys.exit(Supervisor([sys.executable, "run.py", "--reuse-port"], count=2).run())

Each worker is the same command, listening with SO_REUSEPORT, so the kernel spreads new
connections over them; they share nothing but what they share through Redis. This
process only watches: it forwards the workers' output, starts a worker again when one
exits on its own, and on SIGTERM or SIGINT sends SIGTERM to every worker (each closes its
sockets with 1001) and waits for them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

log = logging.getLogger(__name__)

READY = "Serving the demo on"  # the line a worker prints once it listens
RESTART_PAUSE = 1.0  # a worker that dies within this of its start is started again after it
STOP_TIMEOUT = 20.0  # seconds a worker may take to close its sockets before it is killed


class _Worker:
    def __init__(self, number: int, process: subprocess.Popen[str]) -> None:
        self.number = number
        self.process = process
        self.started = time.monotonic()


class Supervisor:
    """Runs `count` copies of `command`; `run()` returns the exit status once stopped."""

    def __init__(self, command: list[str], count: int, *, env: dict[str, str] | None = None) -> None:
        self.command = command
        self.count = count
        self.env = dict(os.environ if env is None else env)
        self._workers: dict[int, _Worker] = {}
        self._stop = threading.Event()
        self._ready: set[int] = set()
        self._announced = False
        self._lock = threading.Lock()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stop.set())
        for number in range(1, self.count + 1):
            self._start(number)
        restarts: dict[int, float] = {}  # worker number -> when to start it again
        while not self._stop.wait(0.2):
            now = time.monotonic()
            for number, worker in list(self._workers.items()):
                code = worker.process.poll()
                if code is None or number in restarts:
                    continue
                log.warning("worker %d (pid %d) exited with %s; starting it again", number,
                            worker.process.pid, _status(code))
                quick = now - worker.started < RESTART_PAUSE
                restarts[number] = now + (RESTART_PAUSE if quick else 0.0)
            for number, when in list(restarts.items()):
                if now >= when:
                    del restarts[number]
                    self._start(number)
        return self._stop_all()

    def _start(self, number: int) -> None:
        process = subprocess.Popen(self.command, env={**self.env, "WORKER": str(number)}, text=True,
                                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self._workers[number] = _Worker(number, process)
        assert process.stdout is not None
        threading.Thread(target=self._forward, args=(number, process.stdout), daemon=True).start()

    def _forward(self, number: int, lines: IO[str]) -> None:
        # A worker's output, through this process: its READY line is announced once for all.
        for line in lines:
            if not line.startswith(READY):
                sys.stdout.write(line)
                sys.stdout.flush()
                continue
            with self._lock:
                self._ready.add(number)
                if self._announced or len(self._ready) < self.count:
                    continue
                self._announced = True
            print(line.rstrip().replace(" loop);", f" loop, {self.count} workers);", 1), flush=True)

    def _stop_all(self) -> int:
        workers = list(self._workers.values())
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in workers:
            try:
                worker.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop within %g s; killing it", worker.number,
                            worker.process.pid, STOP_TIMEOUT)
                worker.process.kill()
                worker.process.wait()
        return 0


def _status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
