"""The audit log: one append-only row per administrative change (users, keys, teams and roles,
prompt types, webhooks), written in the same transaction as the change."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, utcnow


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_at", "at", "id"),  # newest first, and the cursor
        Index("ix_audit_log_target", "target_type", "target_id", "at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Who: a user (an admin, or the owner of a webhook); None: the command line.
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor: Mapped[str] = mapped_column(String(320))  # their email, or "command line"
    action: Mapped[str] = mapped_column(String(64))  # e.g. "team.member.set", "key.revoke"
    target_type: Mapped[str] = mapped_column(String(32))  # user, key, team, prompt_type, …
    target_id: Mapped[str] = mapped_column(String(200))
    # The target as it was and as it became (None: created, or deleted); never a secret.
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
