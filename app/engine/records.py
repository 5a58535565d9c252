"""What a runner holds and hands over: the prompt it claimed (`Claim`), and what it records of
each provider call (`AttemptRecord`) and of the answer (`ResponseRecord`). Plain values,
written by the recorder (`recorder.py`, `batch_writes.py`) and read by nothing else."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class Claim:
    """What a runner needs to execute a prompt it has claimed. `fence` is the execution
    number: only the holder of the current one may finish the prompt."""

    prompt_id: uuid.UUID
    fence: int
    model: str
    provider: str
    upstream_model: str
    prompt_text: str
    parameters: dict[str, Any]
    limited: bool = False  # it holds reservations in the limits ledger: settle it when it ends


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    provider: str
    model: str
    started_at: datetime
    ended_at: datetime
    outcome: str
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_estimated: bool = False
    cost_usd: Decimal | None = None
    catalogue_version: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    response_text: str
    duration_ms: int
    provider: str
    upstream_model: str
    input_tokens: int
    output_tokens: int
    usage_estimated: bool
    cost_usd: Decimal
    finish_reason: str | None
    catalogue_version: str | None
    # Streamed answers only: from the start of the call that answered to its first text.
    time_to_first_token_ms: int | None = None
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    # OpenAI's shape: [{"id", "type": "function", "function": {"name", "arguments"}}]
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None
    # A structured-output prompt's answer, parsed (and checked against its schema).
    output_json: Any = None
    # With `n` > 1: the answers after the first, each {"text", "finish_reason", "tool_calls",
    # "refusal"} (executor.choice_record).
    choices: list[dict[str, Any]] | None = None
