from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, utcnow


class PromptType(Base):
    """One version of a prompt type's policy (app/services/prompt_types). Rows are append-only: a
    change is a new version and retiring is a new version marked `retired`, so a prompt's
    `prompt_type_version` always names the exact policy it ran under. The type's current
    state is its highest version.

    The unique (name, version) index also serves "latest version of a name"."""

    __tablename__ = "prompt_types"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(500))
    system_instruction: Mapped[str | None] = mapped_column(Text)
    template: Mapped[str | None] = mapped_column(Text)
    default_model: Mapped[str | None] = mapped_column(String(200))
    # None: the model's own catalogue fallbacks; []: none.
    fallbacks: Mapped[list[str] | None] = mapped_column(JSONType)
    max_prompt_chars: Mapped[int | None] = mapped_column(Integer)
    max_output_tokens: Mapped[int | None] = mapped_column(Integer)
    timeout_seconds: Mapped[float | None] = mapped_column(Float)
    retired: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )

    def policy(self) -> dict[str, Any]:
        """The fields that make up the policy (what a PUT sets), for comparing versions."""
        return {
            "description": self.description,
            "system_instruction": self.system_instruction,
            "template": self.template,
            "default_model": self.default_model,
            "fallbacks": self.fallbacks,
            "max_prompt_chars": self.max_prompt_chars,
            "max_output_tokens": self.max_output_tokens,
            "timeout_seconds": self.timeout_seconds,
        }
