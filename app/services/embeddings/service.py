"""`POST /v1/embeddings` on top of the prompt records (`EmbeddingService`).

An embeddings call is a prompt like a chat completion (app/engine/embedding_prompts.py says
how it is stored: `prompt_type` `embedding`, the inputs as its text, a summary as its
response): checked by the intake (`Intake.admit_embedding`) before anything is written,
recorded already claimed by this process, and run at once by the same `InlineRunner` and
executor as a chat, while the client waits. Its call is an attempt with its input tokens and
its cost at the catalogue's price; the vectors go to the client only.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any, cast

from pydantic_core import to_json

from app.db.models import NewPrompt
from app.engine.executor import Outcome
from app.engine.inline import InlineRunner
from app.engine.recorder import Recorder
from app.kit.errors import AppError, InvalidInput
from app.providers.base import Embeddings, unpack_floats
from app.services.auth.authenticator import Caller
from app.services.chat.errors import UpstreamFailed
from app.services.embeddings.schemas import EmbeddingCreate, token_ids
from app.services.intake import EmbeddingAsk, Intake


class EmbeddingCancelled(AppError):
    """The execution was stopped before it answered: its cancellation was requested through
    /ai/prompts/{id}/cancel, or this server is stopping."""

    status_code = 409
    code = "prompt_cancelled"
    title = "Cancelled"


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """A finished embeddings call: its recorded prompt, and its vectors or why there are
    none (the error to answer with, the prompt's own: `failed` or `cancelled`)."""

    prompt: NewPrompt
    embeddings: Embeddings | None
    encoding_format: str
    error: AppError | None = None

    def body(self) -> bytes:
        """OpenAI's answer, as JSON: `{"object": "list", "data": [{"object": "embedding",
        "index", "embedding"}], "model", "usage"}`, the model as the client named it."""
        assert self.embeddings is not None
        base64_format = self.encoding_format == "base64"
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": (
                    base64.b64encode(vector).decode("ascii")
                    if base64_format
                    else unpack_floats(vector)
                ),
            }
            for index, vector in enumerate(self.embeddings.vectors)
        ]
        tokens = self.embeddings.input_tokens
        answer: dict[str, Any] = {
            "object": "list",
            "data": data,
            "model": self.prompt.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return to_json(answer)


@dataclass(frozen=True, slots=True)
class EmbeddingRun:
    """An embeddings call under way in this process: its recorded prompt and the task that
    executes it (cancelling the task abandons the call, records it, and ends the prompt
    `cancelled`)."""

    prompt: NewPrompt
    encoding_format: str
    task: asyncio.Task[Outcome]
    headers: dict[str, str] | None = None  # RateLimit-*, for a caller with limits

    def result(self) -> EmbeddingResult:
        """Once the task is done: the vectors, or the error to answer with (`UpstreamFailed`:
        the prompt is `failed`; `EmbeddingCancelled`)."""
        prompt, encoding_format = self.prompt, self.encoding_format
        if self.task.cancelled():
            cancelled = EmbeddingCancelled(
                f"Prompt {prompt.id} was cancelled before it answered (its cancellation was "
                "requested, or the server is stopping)."
            )
            return EmbeddingResult(prompt, None, encoding_format, cancelled)
        outcome = self.task.result()
        if outcome.error is not None:
            failed = UpstreamFailed(outcome.error, message=outcome.error_message)
            return EmbeddingResult(prompt, None, encoding_format, failed)
        return EmbeddingResult(prompt, outcome.embeddings, encoding_format)


class EmbeddingService:
    """What `POST /v1/embeddings` does. One per process (`Services.embeddings`)."""

    def __init__(self, *, intake: Intake, recorder: Recorder, runner: InlineRunner) -> None:
        self.intake = intake
        self.recorder = recorder
        self.runner = runner

    async def start(self, caller: Caller, data: EmbeddingCreate) -> EmbeddingRun:
        """Check the request (the intake raises whatever is wrong with it before anything is
        written), record it as a prompt this process has claimed, and start executing it."""
        ask = ask_for(caller, data)
        prompt = await self.intake.admit_embedding(ask)
        try:
            claim = await self.recorder.create_claimed(
                prompt, lease_seconds=self.runner.lease_seconds
            )
        except BaseException:
            self.intake.undo(prompt)
            raise
        headers = ask.grant.headers if ask.grant is not None else None
        return EmbeddingRun(
            prompt, data.encoding_format or "float", self.runner.run(claim), headers
        )

    async def create(self, caller: Caller, data: EmbeddingCreate) -> EmbeddingResult:
        """`start`, then wait for the result. If this is cancelled, so is the execution."""
        run = await self.start(caller, data)
        try:
            await asyncio.wait([run.task])
        except asyncio.CancelledError:
            run.task.cancel()
            raise
        return run.result()


def ask_for(caller: Caller, data: EmbeddingCreate) -> EmbeddingAsk:
    """What the request asks for, for the intake; token ids are refused by name."""
    if token_ids(data.input):
        raise InvalidInput(
            "input given as token ids is not supported here (they are one tokenizer's, and "
            "not every provider could read them): send the text.",
            code="unsupported_parameter",
            extra={"parameter": "input"},
        )
    # (strings only, now that token ids are refused)
    inputs = [data.input] if isinstance(data.input, str) else cast("list[str]", data.input)
    return EmbeddingAsk(
        user_id=caller.user.id,
        api_key_id=caller.key_id,
        team_id=caller.team_id,
        allowed_models=caller.allowed_models,
        accounts=caller.accounts,
        model=data.model,
        inputs=inputs,
        encoding_format=data.encoding_format or "float",
        dimensions=data.dimensions,
        user=data.user,
    )
