"""Keyset-pagination cursors over (timestamp, id): the prompt list's and the audit log's. A
cursor is opaque to clients (URL-safe base64 of the last row's timestamp and id); one this API
did not return is a 422 `invalid_cursor`."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from app.kit.errors import InvalidInput


def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, row_id = raw.partition("|")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive")
        return when, uuid.UUID(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput(
            "cursor is not one this API returned; pass next_cursor unchanged.",
            code="invalid_cursor",
        ) from None
