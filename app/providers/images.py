"""Images a chat message carries (`image_url` parts), as a media type and bytes, for a vendor
that takes them inline (Gemini).

- `parse_data_url` reads a `data:image/<type>;base64,...` URL;
- `ImageFetcher` GETs an http(s) image URL, and only ever through `OutboundClient`
  (app/kit/outbound.py), which refuses loopback, private, link-local and cloud metadata
  addresses (an operator's `OUTBOUND_ALLOWLIST` aside) and follows no redirect. The fetch is
  bounded: at most `MAX_IMAGE_BYTES` are read, and the whole of it has a deadline.

Either way the bytes must be a PNG, JPEG, GIF or WEBP by their magic bytes, and the media type
returned is the one the bytes are (a mislabelled image is still sent as what it is). Every
failure is an `InvalidImage` whose message says what was wrong with the image, in words for the
user who sent it: never a stack trace, an exception's repr or an address it resolved to.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re

import aiohttp
from aiohttp.abc import AbstractResolver

from app.kit.outbound import OutboundClient, OutboundPolicy, OutboundRefused, refusal

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # 20 MiB
DEFAULT_FETCH_TIMEOUT = 10.0  # seconds, for the whole fetch (connect, headers and body)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_KINDS = "PNG, JPEG, GIF or WEBP"
_CHUNK = 64 * 1024

# data:[<media type>][;<parameter>]*;base64,<data>
_DATA_URL = re.compile(
    r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*?);base64,(?P<data>.*)", re.I | re.S
)
_WHITESPACE = re.compile(rb"[ \t\r\n]+")


class InvalidImage(ValueError):
    """An image that cannot be used; `str()` says why, for the user who sent it."""


def image_type(data: bytes) -> str | None:
    """The media type the bytes are by their magic bytes, if one of IMAGE_TYPES."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _checked(data: bytes, *, max_bytes: int) -> tuple[str, bytes]:
    if len(data) > max_bytes:
        raise InvalidImage(f"the image is larger than {_size(max_bytes)}")
    kind = image_type(data)
    if kind is None:
        raise InvalidImage(f"the image's bytes are not a {_KINDS} image")
    return kind, data


def parse_data_url(url: str, *, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[str, bytes]:
    """The media type and bytes of a `data:image/...;base64,...` URL; `InvalidImage` for a
    malformed URL, a media type that is not a PNG, JPEG, GIF or WEBP image, base64 that does
    not decode, bytes that are not such an image, or more than `max_bytes` of them."""
    match = _DATA_URL.fullmatch(url)
    if match is None:
        if url[:5].lower() != "data:":
            raise InvalidImage("the image URL is not a data: URL")
        raise InvalidImage(
            "the image's data: URL is malformed (expected data:image/<type>;base64,<data>)"
        )
    declared = match["type"].strip().lower()
    if declared == "image/jpg":
        declared = "image/jpeg"
    if not declared.startswith("image/"):
        raise InvalidImage(
            f"the data: URL's media type {declared or '(none)'!r} is not an image type"
        )
    if declared not in IMAGE_TYPES:
        raise InvalidImage(f"the data: URL's media type {declared!r} is not a {_KINDS} image")
    encoded = _WHITESPACE.sub(b"", match["data"].encode("ascii", "replace"))
    # Four base64 characters per three bytes: refuse an oversize image before decoding it.
    if len(encoded) > 4 * ((max_bytes + 2) // 3):
        raise InvalidImage(f"the image is larger than {_size(max_bytes)}")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("the image's base64 data does not decode") from None
    if not data:
        raise InvalidImage("the image's data: URL holds no data")
    return _checked(data, max_bytes=max_bytes)


class ImageFetcher:
    """Fetches images by URL, guarded and bounded (see the module's docstring). Its
    `OutboundClient` is opened on the running event loop at the first fetch; `aclose()`
    closes it (on that loop)."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        timeout: float = DEFAULT_FETCH_TIMEOUT,
        max_bytes: int = MAX_IMAGE_BYTES,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._resolver = resolver
        self._client: OutboundClient | None = None
        self._opening = asyncio.Lock()

    async def fetch(self, url: str) -> tuple[str, bytes]:
        """The media type and bytes of the image at `url`; `InvalidImage` for anything
        refused or wrong: a URL the outbound policy refuses, no connection, a status other
        than 2xx (redirects included: they are not followed), a Content-Type other than
        image/png, jpeg, gif or webp, more than `max_bytes`, bytes that are not such an image,
        or no whole answer within `timeout` seconds."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(url)
        except TimeoutError:
            raise InvalidImage(
                f"the image could not be fetched from its URL within {self.timeout:g} s"
            ) from None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _open(self) -> OutboundClient:
        async with self._opening:
            if self._client is None:
                client = OutboundClient(
                    self.policy,
                    headers={"Accept": ", ".join(IMAGE_TYPES), "Accept-Encoding": "identity"},
                    resolver=self._resolver,
                )
                await client.open()
                self._client = client
            return self._client

    async def _fetch(self, url: str) -> tuple[str, bytes]:
        client = self._client or await self._open()
        try:
            async with client.request("GET", url) as response:
                if not 200 <= response.status < 300:
                    moved = " (redirects are not followed)" if 300 <= response.status < 400 else ""
                    raise InvalidImage(f"the image URL answered HTTP {response.status}{moved}")
                declared = response.headers.get("Content-Type", "")
                media_type = declared.split(";", 1)[0].strip().lower()
                if media_type not in IMAGE_TYPES:
                    raise InvalidImage(
                        f"the image URL answered with Content-Type {media_type or '(none)'!r}, "
                        f"not a {_KINDS} image"
                    )
                length = response.content_length
                if length is not None and length > self.max_bytes:
                    raise InvalidImage(f"the image is larger than {_size(self.max_bytes)}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > self.max_bytes:  # stop reading: the rest is never fetched
                        raise InvalidImage(f"the image is larger than {_size(self.max_bytes)}")
        except OutboundRefused as exc:
            raise InvalidImage(f"the image URL may not be fetched: {exc}") from None
        except aiohttp.ClientError as exc:
            refused = refusal(exc)
            if refused is not None:
                raise InvalidImage(f"the image URL may not be fetched: {refused}") from None
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise InvalidImage(
                    "the image could not be fetched: its host did not connect"
                ) from None
            raise InvalidImage(
                "the image could not be fetched: the connection failed before the whole image"
            ) from None
        return _checked(bytes(body), max_bytes=self.max_bytes)


def _size(count: int) -> str:
    if count >= 1024 * 1024 and count % (1024 * 1024) == 0:
        return f"{count // (1024 * 1024)} MiB"
    return f"{count} bytes"
