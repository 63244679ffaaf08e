"""Start the demo server: `python run.py --help` lists the options."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import os
import sys

from aiohttp import web

from server.app import make_app
from server.config import parse_settings
from server.logs import JsonFormatter
from server.workers import Supervisor


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    settings = parse_settings(argv)
    worker = os.environ.get("WORKER")  # set by the supervisor: its log lines name the worker
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s " + (f"[worker {worker}] " if worker else "")
                        + "%(name)s: %(message)s")
    if settings.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    if settings.workers > 1:
        command = [sys.executable, os.path.abspath(__file__), *argv, "--workers", "1", "--reuse-port"]
        sys.exit(Supervisor(command, settings.workers).run())
    if worker and settings.metrics_port is not None:  # each worker scraped on a port of its own
        settings = dataclasses.replace(settings, metrics_port=settings.metrics_port + int(worker) - 1)
    if settings.metrics and importlib.util.find_spec("prometheus_client") is None:
        sys.exit("run.py: --metrics: prometheus_client is not installed (pip install '.[metrics]')")
    try:
        app = make_app(settings)
    except ValueError as exc:  # a bad SESSION_KEY, for one
        sys.exit(f"run.py: {exc}")
    loop = new_event_loop(settings.loop)
    # A backlog of 4096 (the kernel caps it at net.core.somaxconn): a reconnect storm of
    # thousands of clients waits in the kernel's queue instead of retrying dropped SYNs.
    web.run_app(app, host=settings.host, port=settings.port, shutdown_timeout=10, backlog=4096, loop=loop,
                reuse_port=settings.reuse_port or None,
                print=lambda _: print(f"Serving the demo on http://{settings.host}:{settings.port}/ "
                                      f"(sessions in {'Redis' if settings.redis_url else 'cookies'}, "
                                      f"{type(loop).__module__.split('.')[0]} loop); "
                                      "Ctrl+C to stop", flush=True))


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """The event loop `--loop` asks for: uvloop when chosen, or on `auto` when installed."""
    if choice == "uvloop" or (choice == "auto" and importlib.util.find_spec("uvloop") is not None):
        try:
            import uvloop
        except ImportError:
            sys.exit("run.py: --loop uvloop: uvloop is not installed (pip install '.[speed]')")
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


if __name__ == "__main__":
    main()
