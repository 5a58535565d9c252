"""/v1/embeddings: OpenAI's Embeddings API, for the official SDKs unchanged
(`client.embeddings.create(...)` with `base_url=http://host:8000/v1`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.types import Receive, Scope, Send

from app.api.auth import WorkCaller
from app.api.chat_responses import PROMPT_ID_HEADER
from app.api.deps import ServicesDep
from app.api.openai_errors import OpenAIRoute, app_error_response, handle
from app.services.chat.schemas import ErrorBody
from app.services.embeddings.schemas import CreateEmbeddingResponse, EmbeddingCreate
from app.services.embeddings.service import EmbeddingRun

router = APIRouter(prefix="/v1", tags=["openai-compatible"], route_class=OpenAIRoute)

_ERRORS = {
    400: "Invalid body (`validation_error`: an empty input or list, more than 2,048 inputs; "
    "`invalid_text`), a chat model or a provider without embeddings "
    "(`model_not_supported`), token ids or a `dimensions` the model cannot honour "
    "(`unsupported_parameter`), an input over `MAX_PROMPT_CHARS` (`prompt_too_large`), a "
    "request larger than a whole limit (`request_exceeds_limit`), or "
    "the provider refused the request (`bad_request`, `context_length_exceeded`).",
    401: "Missing, unknown, expired or revoked API key.",
    404: "Unknown model (`model_not_found`).",
    409: "The prompt was cancelled before it answered (`prompt_cancelled`).",
    429: "A limit of your key, user or team has no room (`rate_limit_exceeded`, "
    "`insufficient_quota`; `Retry-After`, `RateLimit-Policy` / `RateLimit`), or the provider "
    "kept rate-limiting after the retries (`rate_limited`).",
    500: "The provider's adapter failed (`internal_error`).",
    502: "The provider failed (`connection_error`, `malformed_response`, …).",
    503: "The provider is unavailable (`provider_unavailable`, `circuit_open`).",
    504: "The provider did not answer in time (`timeout`).",
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in _ERRORS.items()
}


@router.post(
    "/embeddings",
    summary="Create embeddings (OpenAI-compatible)",
    response_model=CreateEmbeddingResponse,
    responses={
        200: {
            "description": "One `embedding` per input, in order. `X-Prompt-Id` names the "
            "prompt in `/ai/prompts`."
        },
        **_RESPONSES,
    },
)
async def create_embeddings(
    data: EmbeddingCreate, caller: WorkCaller, services: ServicesDep
) -> Response:
    """OpenAI's embeddings on the catalogue's embedding models (capability `embeddings`:
    `text-embedding-3-small`, `gemini-embedding-001`, `local-embedding`, …), whatever their
    provider.

    Executed at once by this server while the client waits, retried like any call (one model:
    no fallbacks, since another model's vectors could not be compared with the first's), and
    recorded as a prompt of type `embedding` (its inputs as the text, a summary such as
    "2 embeddings of 1536 dimensions" as the response, the input tokens and their cost), listed
    in `GET /ai/prompts/`. The vectors themselves are not stored. A client that disconnects
    cancels the call (the prompt ends `cancelled`).
    """
    return EmbeddingsResponse(await services.embeddings.start(caller, data))


class EmbeddingsResponse(Response):
    """The answer, sent once the execution has ended, while the connection is watched: a
    client that goes away first cancels the execution, which abandons the upstream call,
    records it, and ends the prompt `cancelled` (as a chat's `_WatchedResponse` does)."""

    def __init__(self, run: EmbeddingRun) -> None:
        super().__init__()  # the attributes a Response has; what it sends is `__call__`'s
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = self.run.task
        watcher = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not task.done():  # the client left, or this server is stopping
                task.cancel()
                await asyncio.wait([task])
        if not watcher.cancelled() and watcher.done():
            return  # nobody to answer
        headers = {PROMPT_ID_HEADER: str(self.run.prompt.id), **(self.run.headers or {})}
        response: Response
        try:
            result = self.run.result()
            if result.error is None:
                body = result.body()
                response = Response(body, media_type="application/json", headers=headers)
            else:  # (recorded: the prompt failed, or was cancelled)
                response = app_error_response(result.error)
        except Exception as exc:  # a bug: the app's 500, in OpenAI's shape
            response = await handle(Request(scope), exc)
        response.headers.update(headers)
        await response(scope, receive, send)


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone away; never, if the server stops listening first."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # nothing more to watch
        await asyncio.Event().wait()
