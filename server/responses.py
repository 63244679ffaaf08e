"""Responses that act once they have been sent."""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)


class ThenResponse(web.Response):
    """A response that runs `then()` after it has been written, cookie included.

    A login must close the replaced session's sockets with 4003 ("reconnect now, the
    cookie is new"), but only once the new cookie is on its way: closed earlier, a tab
    reconnects with the old cookie.
    """

    def __init__(self, *args: Any, then: Callable[[], Awaitable[object]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._then: Callable[[], Awaitable[object]] | None = then

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        then, self._then = self._then, None
        if then is not None:
            try:
                await then()
            except Exception:
                log.exception("the action after a response failed")


def json_then(data: Any, then: Callable[[], Awaitable[object]]) -> ThenResponse:
    """`web.json_response(data)` that runs `then()` once it has been sent."""
    return ThenResponse(text=json.dumps(data), content_type="application/json", then=then)
