"""Log lines as JSON objects, one per line (`run.py --log-format json`), with the stdlib only.

The facts of a line travel as `extra` fields (`socket`, `user`, `code`, `reason`,
`remote`, `event`), which both formats show: text puts them in the message, JSON gives
each its own key. No line carries a session identity, a cookie or a password.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

FIELDS = ("socket", "user", "code", "reason", "remote", "event")


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", <fields>, "worker"?, "exception"?}` per record."""

    def __init__(self) -> None:
        super().__init__()
        self.worker = os.environ.get("WORKER")  # set by run.py --workers for each worker

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if self.worker:
            out["worker"] = int(self.worker)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)
