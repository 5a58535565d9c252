"""/v1: OpenAI-compatible chat completions and model list, for the official SDKs unchanged
(`base_url=http://host:8000/v1`, `api_key=<a Prompt Manager key>`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from starlette.types import Receive, Scope, Send

from app.api.auth import CurrentUser, WorkCaller
from app.api.chat_responses import ChatCompletionResponse, ChatStreamResponse
from app.api.deps import IdempotencyKeyHeader, ServicesDep
from app.api.openai_errors import OpenAIRoute, error_response
from app.services.chat import service
from app.services.chat.schemas import (
    ChatCompletion,
    ChatCompletionCreate,
    ErrorBody,
    Model,
    ModelList,
)

router = APIRouter(prefix="/v1", tags=["openai-compatible"], route_class=OpenAIRoute)


# One server-sent event (before OpenAPI 3.2, a stream's `schema` describes each event).
_SSE_EVENT = {
    "type": "object",
    "description": "`data` is a `chat.completion.chunk` as JSON, then `[DONE]` last; or an "
    '`{"error": {...}}` object if the call fails after the stream began.',
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Invalid body or unsupported feature (`validation_error`, `invalid_text`: a NUL "
        "or a lone surrogate in a string, `unsupported_parameter`, …), a request larger than "
        "a whole limit of your key, user or team (`request_exceeds_limit`), or the provider "
        "refused the request (`context_length_exceeded`, …).",
        401: "Missing, unknown, expired or revoked API key.",
        404: "Unknown model (`model_not_found`), or unknown path.",
        409: "The prompt was cancelled before it answered (`prompt_cancelled`).",
        429: "A limit of your key, user or team has no room: `rate_limit_exceeded` (requests "
        "or tokens per minute, prompts in flight), `insufficient_quota` (its budget), with "
        "`Retry-After` and `RateLimit-Policy` / `RateLimit`; or the provider kept "
        "rate-limiting after the retries and fallbacks (`rate_limited`).",
        502: "The provider failed (`connection_error`, `malformed_response`, …).",
        503: "The provider is unavailable (`provider_unavailable`, `circuit_open`).",
        504: "The provider did not answer in time (`timeout`).",
    }
    return {s: {"model": ErrorBody, "description": descriptions.get(s, "Error")} for s in statuses}


@router.post(
    "/chat/completions",
    summary="Create a chat completion (OpenAI-compatible)",
    response_model=ChatCompletion,
    responses={
        200: {
            "description": "A `chat.completion`; with `stream: true`, server-sent "
            "`chat.completion.chunk` events ending `data: [DONE]`. `X-Prompt-Id` names the "
            "prompt in `/ai/prompts`.",
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
        },
        **_errors(400, 401, 404, 409, 429, 502, 503, 504),
    },
)
async def create_chat_completion(
    data: ChatCompletionCreate,
    caller: WorkCaller,
    services: ServicesDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """OpenAI's chat completions on any model of the catalogue, whatever its provider.

    Executed at once by this server while the client waits, with the usual retries,
    fallbacks and circuit breaker; recorded like every prompt (`prompt_type` `chat`, the
    messages in `parameters.messages`), so it is listed in `GET /ai/prompts/` with its
    response, tokens, cost and duration. A defined prompt type (`chat`, or the one the
    `prompt_type` extension names) applies its policy, as on `/ai/prompts/`. A client that
    disconnects cancels the call (the prompt ends `cancelled`).

    The whole Chat Completions request is taken: tools (and the legacy `functions`),
    `response_format` (JSON mode and JSON schema), `n`, stop sequences, sampling fields,
    logprobs, `reasoning_effort`, image parts. Each is forwarded to OpenAI and compatible
    servers, translated for Gemini and Anthropic, or refused by name (400
    `unsupported_parameter`, naming the field and the provider) where the chosen model cannot
    honour it: the README's translation matrix says which. With `drop_params` (this request's
    `extra_body`, else the API key's setting, else the server's `DROP_PARAMS`) such fields are
    left out instead, recorded on the prompt and named in `X-Dropped-Params`.

    With an `Idempotency-Key`, a retry of the same body gets the first call's answer (waiting
    for it if it is still running), with `Idempotent-Replayed: true`, and no second prompt or
    provider call; streamed, each replayed answer's text comes as one chunk.
    """

    run = await services.chat.start(caller, data, idempotency_key=idempotency_key)
    response = ChatStreamResponse(run) if run.stream else ChatCompletionResponse(run)
    if run.replayed:
        response.headers_out["Idempotent-Replayed"] = "true"
    return response


@router.get("/models", summary="List models (OpenAI-compatible)", responses=_errors(401))
async def list_models(_: CurrentUser, services: ServicesDep) -> ModelList:
    """The catalogue models whose provider is configured here, in OpenAI's list shape
    (`owned_by` is the provider). `GET /ai/models/` has their prices and limits."""
    return service.list_models(services.models)


@router.get(
    "/models/{model_id}",
    summary="Retrieve a model (OpenAI-compatible)",
    responses=_errors(401, 404),
)
async def get_model(_: CurrentUser, services: ServicesDep, model_id: str) -> Model:
    """One model of `GET /v1/models`, by its name or an alias; 404 `model_not_found` for any
    other."""
    return service.get_model(services.models, model_id)


async def unknown_url(scope: Scope, receive: Receive, send: Send) -> None:
    """Other OpenAI endpoints (responses, images, …) are not served here: a 404 in
    OpenAI's shape, which the SDKs raise as `NotFoundError`.

    The app answers this for a /v1 path that no route has in either form
    (`paths.serve_both_forms`), rather than a `/v1/{path:path}` route: such a route matched
    every /v1 path first, so a known path with another method was a 404 here instead of the
    route's 405, and `/v1/chat/completions/` never reached the chat route."""
    response = error_response(
        404,
        f"Invalid URL ({scope['method']} {scope['path']}): this server serves only "
        "POST /v1/chat/completions, POST /v1/embeddings and GET /v1/models.",
        code="unknown_url",
    )
    await response(scope, receive, send)
