"""Start the demo server: `python run.py --help` lists the options."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from server.app import make_app
from server.config import parse_settings


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = make_app(settings)
    except ValueError as exc:  # a bad SESSION_KEY, for one
        sys.exit(f"run.py: {exc}")
    # A backlog of 4096 (the kernel caps it at net.core.somaxconn): a reconnect storm of
    # thousands of clients waits in the kernel's queue instead of retrying dropped SYNs.
    web.run_app(app, host=settings.host, port=settings.port, shutdown_timeout=10, backlog=4096,
                print=lambda _: print(f"Serving the demo on http://{settings.host}:{settings.port}/ "
                                      f"(sessions in {'Redis' if settings.redis_url else 'cookies'}); "
                                      "Ctrl+C to stop", flush=True))


if __name__ == "__main__":
    main()
