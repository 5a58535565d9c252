"""Server-sent events (`text/event-stream`) decoded as they arrive, for the adapters that read
a vendor's stream over HTTP themselves (openai_http) rather than through its SDK.

Why our own decoder: aiohttp's `readline` refuses a line longer than its buffer (128 KiB), a
size one chunk of an answer can reach, and the SDKs' decoders are private to them. The format
is small (WHATWG HTML, "server-sent events"): lines end in CRLF, LF or CR; `field: value` with
one optional space after the colon; a line starting with `:` is a comment; a blank line ends
an event; several `data` lines are joined with LF; an event without data is not dispatched,
and neither is one cut off by the end of the stream.

`EventDecoder` does no I/O; `EventReader` reads an aiohttp response's body into it, a read at a
time, each read waiting as long as its caller lets it (the caller owns the deadline).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import aiohttp

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    data: str
    event: str | None = None  # the `event:` field, for vendors that name their events


class EventDecoder:
    """Bytes in, complete events out. One decoder per stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # the buffer holds no line end before this offset
        self._data: list[str] | None = None  # the current event's data lines, if any yet
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that `chunk` completes, in order."""
        self._buffer += chunk
        events: list[Event] = []
        start = 0
        for match in _LINE_END.finditer(self._buffer, self._scanned):
            if match.group() == b"\r" and match.end() == len(self._buffer):
                break  # maybe the first half of a CRLF split between two reads
            event = self._line(bytes(self._buffer[start : match.start()]))
            if event is not None:
                events.append(event)
            start = match.end()
        del self._buffer[:start]
        pending_cr = 1 if self._buffer.endswith(b"\r") else 0
        self._scanned = len(self._buffer) - pending_cr
        return events

    def _line(self, raw: bytes) -> Event | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            if self._data is None:
                self._data = []
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None  # `id`, `retry` and unknown fields mean nothing here

    def _dispatch(self) -> Event | None:
        data, event = self._data, self._event
        self._data = self._event = None
        if data is None:
            return None
        return Event("\n".join(data), event or None)


class EventReader:
    """The events of one `text/event-stream` response, as its body arrives."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._decoder = EventDecoder()

    async def read(self) -> list[Event] | None:
        """The events that the next bytes complete (maybe none); None at the end of the body."""
        data = await self._response.content.readany()
        return self._decoder.feed(data) if data else None

    async def release(self, drain_seconds: float) -> None:
        """Done with the events: read what is left (the end of a chunked body, normally there
        already) so the connection can be reused; a server that keeps talking for longer than
        `drain_seconds` loses the connection instead."""
        try:
            async with asyncio.timeout(drain_seconds):
                while await self._response.content.readany():
                    pass
        except (TimeoutError, aiohttp.ClientError, OSError):
            self._response.close()
        else:
            self._response.release()

    def close(self) -> None:
        """Abandon the response: its connection is closed (a no-op once released)."""
        self._response.close()
