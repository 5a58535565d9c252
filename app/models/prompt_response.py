from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, Money, UTCDateTime, utcnow

if TYPE_CHECKING:
    from app.models.prompt_request import PromptRequest


class PromptResponse(Base):
    """The answer to a prompt. `prompt_id` is unique: a prompt is answered at most once."""

    __tablename__ = "prompt_responses"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    prompt_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("prompt_requests.id", ondelete="CASCADE"), unique=True
    )
    response_text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    duration_ms: Mapped[int] = mapped_column(Integer)

    provider: Mapped[str] = mapped_column(String(64))
    upstream_model: Mapped[str] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    cost_usd: Mapped[Decimal] = mapped_column(Money)
    catalogue_version: Mapped[str | None] = mapped_column(String(32))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    time_to_first_token_ms: Mapped[int | None] = mapped_column(Integer)

    prompt: Mapped[PromptRequest] = relationship(back_populates="response", lazy="raise")
