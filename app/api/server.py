"""uvicorn's httptools protocol with a bound on the request head (MAX_HEADER_BYTES).

httptools keeps a header line in memory until it ends, with no limit: a client could send a
10 MB header and uvicorn would read it all, then hand it to the app. A check in the app
(`middleware.BodyLimitMiddleware`) comes too late for that. This protocol answers 431 (the
app's problem, `header_too_large`) and closes the connection, without reading the rest:

- when a head is complete, if its size as the app counts it (`middleware.target_bytes`) is
  over the limit: the same heads as the app refuses, wherever the server runs it;
- while a head is incomplete, once the bytes received for it pass the limit and `_SLACK`
  (what the app's count leaves out: the method, the HTTP version, line ends, spaces). That is
  the bound on memory: a server process holds at most that, and the read in progress
  (256 KiB at most), of any head. A read that ends one message and starts the next
  (pipelining, rare) is not counted for the next head.

`python -m app serve` uses it (`http="app.api.server:HeadLimitedProtocol"`; with uvicorn itself:
`--http app.api.server:HeadLimitedProtocol`). The limit is the app's own MAX_HEADER_BYTES: each
connection reads it from the app that uvicorn loaded in its process, so the server and the
app's check cannot disagree.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.api.middleware import head_too_large

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 16_384  # (Settings.max_header_bytes' default, for an app without settings)
_SLACK = 1024


def app_limit(app: object) -> int:
    """MAX_HEADER_BYTES of the app, found under the middleware uvicorn wraps it in (proxy
    headers, message logging: each keeps the app it wraps as `app`)."""
    for _ in range(8):
        settings = getattr(getattr(app, "state", None), "settings", None)
        if settings is not None:
            return int(settings.max_header_bytes)
        app = getattr(app, "app", None)
    return DEFAULT_LIMIT


class HeadLimitedProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_head = app_limit(config.loaded_app)
        self._in_head = True  # the bytes that arrive belong to a request's head
        self._head_bytes = 0  # of reads wholly inside the current head
        self._read = 0  # the current read's size: an upper bound of its share of the head
        self._head_bound = 0  # an upper bound of the current head's size
        self._crossed = False  # the current read ended a head or a message
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # (the 431 is out or waiting for the response in progress; then we close)
        self._read = len(data)
        self._crossed = False
        if self._in_head:
            self._head_bound += self._read
        super().data_received(data)
        if self._in_head and not self._crossed and not self._refused:
            self._head_bytes += self._read
            if self._head_bytes > self.max_head + _SLACK:
                self._refuse()
        elif self._refused:
            self._refuse()

    def on_headers_complete(self) -> None:
        self._crossed = True
        self._in_head = False
        # (most heads arrive in a read smaller than the limit: then nothing is counted)
        over = self._head_bound > self.max_head and self._exact_head() > self.max_head
        self._head_bytes = self._head_bound = 0
        if over:
            self._refused = True  # (data_received answers once the parser returns)
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._crossed = True
        self._in_head = True
        self._head_bytes = 0
        self._head_bound = self._read  # the next head may have begun in this read
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._refused:
            self._send_431()  # the response that was in progress is out: now the 431
            return
        super().on_response_complete()

    def _exact_head(self) -> int:
        """The head as `middleware.target_bytes` counts it (`self.url` is path and query)."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _refuse(self) -> None:
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            # A response to an earlier request of this connection is being written: the 431
            # follows it (on_response_complete) rather than interleaving with it. Requests
            # pipelined behind it go unanswered with the connection; clients retry those.
            self.flow.pause_reading()
            return
        self._send_431()

    def _send_431(self) -> None:
        if self.transport.is_closing():
            return
        client = "{}:{}".format(*self.client) if self.client else "a client"
        logger.warning(
            "refused a request head over MAX_HEADER_BYTES (%d) from %s", self.max_head, client
        )
        body = bytes(head_too_large().body)
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/problem+json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
