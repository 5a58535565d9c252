"""A prompt (`PromptRequest`: the row is the job), the attempts of its executions and its
response: one module, as the three refer to each other."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    false,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, JSONType, Money, UTCDateTime, utcnow


class PromptStatus(enum.StrEnum):
    """`pending → running → completed | failed | cancelled`; every move is a conditional update."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class PromptRequest(Base):
    """A prompt and its execution state: the row is the job."""

    __tablename__ = "prompt_requests"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
            name="status",
        ),
        # A user's prompts, newest first (the list endpoint and its cursor); a team's too.
        Index("ix_prompt_requests_user_created", "user_id", "created_at", "id"),
        Index(
            "ix_prompt_requests_team_created",
            "team_id",
            "created_at",
            "id",
            postgresql_where=text("team_id IS NOT NULL"),
            sqlite_where=text("team_id IS NOT NULL"),
        ),
        # The sweeper (pending and expired running rows) and status filters.
        Index("ix_prompt_requests_status_created", "status", "created_at"),
        Index("ix_prompt_requests_created_at", "created_at"),
        # A user's pending prompts, oldest first: the per-user cap counts them, a full
        # runner claims them back by owner (app/engine/runners.py).
        Index(
            "ix_prompt_requests_pending_user",
            "user_id",
            "created_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # The key it was made with, and the team that key is scoped to (None: the user's own).
    # No foreign keys: a prompt outlives its key's row, and every insert would pay a lookup.
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    team_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    model: Mapped[str] = mapped_column(String(200))
    prompt_type: Mapped[str] = mapped_column(String(64))
    # The version of the type's policy it ran under (app/services/prompt_types); None for a
    # type that was not defined. No foreign key: versions are never deleted, and a composite
    # key would cost every insert a lookup and SQLite a copy of this table to add.
    prompt_type_version: Mapped[int | None] = mapped_column(Integer)
    prompt_text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=PromptStatus.PENDING)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    provider: Mapped[str] = mapped_column(String(64))
    upstream_model: Mapped[str] = mapped_column(String(200))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    meta: Mapped[dict[str, str]] = mapped_column("metadata", JSONType, default=dict)
    # Executions claimed so far (each makes one or more provider calls: `attempt_log`); the
    # fence of a claim, so a stale runner's outcome is refused.
    executions: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set when its owner asks to cancel it; a runner holding it stops it (see Recorder.cancel).
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # It holds reservations in the limits ledger (app/engine/ledger.py) until it is settled:
    # only such a prompt's outcome costs the settling step.
    limited: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    response: Mapped[PromptResponse | None] = relationship(
        back_populates="prompt", lazy="raise", uselist=False
    )
    attempt_log: Mapped[list[PromptAttempt]] = relationship(
        back_populates="prompt", lazy="raise", order_by="PromptAttempt.started_at"
    )


# `status = 'pending'` with the status written into the SQL, as in the partial index
# `ix_prompt_requests_pending_user`: as a bound parameter, PostgreSQL's generic plan for a
# prepared statement (asyncpg's, after five runs) could not use that index.
IS_PENDING = PromptRequest.status == literal_column("'pending'")


@dataclass(eq=False)
class NewPrompt:
    """A prompt not yet stored: the row that a submission or a chat inserts, as plain data.

    New prompts are inserted with Core statements (group commit, `batch_writes.py`) and never
    go through a session, so the ORM's instrumented object bought nothing for them and cost
    about 6 % of a /v1 request's CPU (py-spy, `bench/gateways.py`: the generated constructor
    and its attribute events). Its fields are `PromptRequest`'s column attributes, by the
    same names (a test keeps them equal), so it reads like a `PromptRequest` where one is
    expected (`PromptOut.model_validate`, a chat's id and model)."""

    id: uuid.UUID
    user_id: uuid.UUID
    model: str
    prompt_type: str
    prompt_text: str
    provider: str
    upstream_model: str
    created_at: datetime
    api_key_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    prompt_type_version: int | None = None
    status: str = PromptStatus.PENDING
    executions: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_expires_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    limited: bool = False


class PromptAttempt(Base):
    """One provider call, whatever its outcome: the billing-grade record."""

    __tablename__ = "prompt_attempts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    prompt_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("prompt_requests.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(
        String(16)
    )  # success, error, abandoned, cancelled, lost (see Recorder)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_input_tokens: Mapped[int | None] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)  # of output_tokens
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    cost_usd: Mapped[Decimal | None] = mapped_column(Money)
    catalogue_version: Mapped[str | None] = mapped_column(String(32))

    prompt: Mapped[PromptRequest] = relationship(back_populates="attempt_log", lazy="raise")


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
    cached_input_tokens: Mapped[int | None] = mapped_column(Integer)  # of input_tokens
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)  # of output_tokens
    # The tool calls of the answer, in OpenAI's shape; None when it made none.
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    refusal: Mapped[str | None] = mapped_column(Text)  # the model's refusal message, if any
    # A structured-output prompt's answer, parsed; None for other prompts (or a failed parse).
    output_json: Mapped[Any] = mapped_column(JSONType, nullable=True)
    # With `n` > 1 (/v1/chat/completions): the answers after the first, in order, each
    # {"text", "finish_reason", "tool_calls", "refusal"}; None for a single answer.
    choices: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)

    prompt: Mapped[PromptRequest] = relationship(back_populates="response", lazy="raise")
