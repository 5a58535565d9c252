from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime, utcnow


class IdempotencyKey(Base):
    """A client's `Idempotency-Key`, kept until `expires_at` with the request it was first sent
    with (`fingerprint`) and the prompt that request created (see
    app/engine/idempotency.py).

    Keys are per user: the primary key is (user_id, key). `prompt_id` is unique (a prompt was
    created under at most one key), which also indexes the cascade from prompt_requests."""

    __tablename__ = "idempotency_keys"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 hex of endpoint + body
    prompt_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("prompt_requests.id", ondelete="CASCADE"), unique=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Past it the key is free again; the sweeper deletes such rows.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
