"""Google's Gemini API through the official `google-genai` SDK (its async client, `.aio`)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import pydantic
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from google import genai
from google.genai import errors, types

from app.providers.base import (
    AuthenticationFailed,
    BadRequest,
    Completion,
    CompletionRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    Message,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
    estimate_tokens,
    retry_after_seconds,
)

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
# Finish reasons meaning the answer was withheld by a policy rather than ended.
FILTERED_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
# "The input token count (N) exceeds the maximum number of tokens allowed (M)." (Gemini API);
# "... the input token count is N but model only supports up to M" (Vertex AI).
CONTEXT_LENGTH = re.compile(r"input token count.*(exceeds the maximum|only supports up to)", re.I)


class _ConnectTimeoutConnector(aiohttp.TCPConnector):
    """Bounds the TCP/TLS connect. The SDK gives every request its own
    `ClientTimeout(total=...)`, which replaces the session's, so this is the only place a
    connect limit survives."""

    def __init__(self, *, connect_timeout: float) -> None:
        super().__init__(limit=0)  # no pool queue: the gateway caps calls in flight itself
        self._connect_timeout = connect_timeout

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Connection:
        bounded = aiohttp.ClientTimeout(
            total=timeout.total,
            connect=timeout.connect,
            sock_read=timeout.sock_read,
            sock_connect=min(timeout.sock_connect or math.inf, self._connect_timeout),
            ceil_threshold=timeout.ceil_threshold,
        )
        return await super().connect(req, traces, bounded)


@dataclass(frozen=True, slots=True)
class GeminiClient:
    """The SDK client and the aiohttp session it sends through; the SDK never closes a
    session it was given, so they are closed together here."""

    sdk: genai.Client
    session: aiohttp.ClientSession

    async def aclose(self) -> None:
        await self.sdk.aio.aclose()
        self.sdk.close()  # the sync transport the SDK builds (unused) holds a pool too
        await self.session.close()


def build_client(
    *, api_key: str, base_url: str | None, timeout: float, connect_timeout: float
) -> GeminiClient:
    """One client per process; call it from the running event loop (the app's lifespan),
    which the aiohttp session belongs to.

    - Retries off: `attempts=1` stops tenacity after one try and also switches off the SDK's
      hidden resend of a refused or reset connection (after a 1-10 s sleep), which it makes
      whenever no `retry_options` are set. The gateway owns that loop, so every upstream
      call is counted and billed once.
    - Our own aiohttp session (the SDK would also pick aiohttp, but build its session by
      subclassing `ClientSession`, which aiohttp deprecates): it bounds the connect time
      (see _ConnectTimeoutConnector) and is closed cleanly with the client.
    - Everything explicit (base URL, API version, `vertexai=False`), so no GOOGLE_* variable
      in the environment changes where requests go.
    """
    session = aiohttp.ClientSession(
        connector=_ConnectTimeoutConnector(connect_timeout=connect_timeout)
    )
    options = types.HttpOptions(
        base_url=base_url or DEFAULT_BASE_URL,
        api_version="v1",
        timeout=_milliseconds(timeout),
        retry_options=types.HttpRetryOptions(attempts=1),
        aiohttp_client=session,
    )
    return GeminiClient(
        genai.Client(api_key=api_key, vertexai=False, http_options=options), session
    )


class GeminiProvider:
    max_temperature = 2.0

    def __init__(self, client: GeminiClient, *, name: str = "gemini") -> None:
        self.name = name
        self._client = client

    async def complete(self, request: CompletionRequest) -> Completion:
        contents, system = _to_contents(request.messages)
        config = types.GenerateContentConfig(
            system_instruction=system,
            temperature=request.temperature,
            max_output_tokens=request.max_tokens,
            # One HTTP call per complete(): no continuation hops, no function-calling loop.
            automatic_continuation=False,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            http_options=(
                types.HttpOptions(timeout=_milliseconds(request.timeout))
                if request.timeout is not None
                else None
            ),
        )
        try:
            reply = await self._client.sdk.aio.models.generate_content(
                model=request.model, contents=contents, config=config
            )
        except (errors.APIError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            mapped = map_gemini_error(exc, provider=self.name)
            if mapped is None:
                raise
            raise mapped from None
        return self._completion(request, reply)

    def _completion(
        self, request: CompletionRequest, reply: types.GenerateContentResponse
    ) -> Completion:
        feedback = reply.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            raise ContentFiltered(
                f"{self.name} refused the prompt under its content policy "
                f"({_name(feedback.block_reason).lower()})"
            )
        if not reply.candidates:
            raise MalformedResponse(f"{self.name} answered with no candidates")
        candidate = reply.candidates[0]
        finish = _name(candidate.finish_reason) if candidate.finish_reason else None
        if finish in FILTERED_FINISH_REASONS:
            raise ContentFiltered(
                f"{self.name} withheld the answer under its content policy ({finish.lower()})"
            )
        parts = candidate.content.parts if candidate.content else None
        # Thought summaries are not the answer; they only appear when asked for, but still.
        text = "".join(p.text for p in parts or [] if p.text and not p.thought)
        usage = reply.usage_metadata
        if usage is not None and usage.prompt_token_count is not None:
            input_tokens = usage.prompt_token_count
            # Thinking tokens are billed as output. Google omits a count that is zero.
            output_tokens = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
            cached = usage.cached_content_token_count or 0
            reported = True
        else:
            input_tokens = estimate_tokens(" ".join(m["content"] for m in request.messages))
            output_tokens = estimate_tokens(text)
            cached, reported = 0, False
        return Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            usage_reported=reported,
            finish_reason=FINISH_REASONS.get(finish, finish.lower()) if finish else None,
            upstream_model=reply.model_version or request.model,
            cached_input_tokens=cached,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _to_contents(messages: list[Message]) -> tuple[list[types.Content], types.Content | None]:
    """Our chat messages as Gemini `contents`; system messages become `systemInstruction`."""
    contents: list[types.Content] = []
    system: list[types.Part] = []
    for message in messages:
        part = types.Part(text=message["content"])
        if message["role"] == "system":
            system.append(part)
        else:
            role = "model" if message["role"] == "assistant" else "user"
            contents.append(types.Content(role=role, parts=[part]))
    return contents, types.Content(parts=system) if system else None


def _milliseconds(seconds: float) -> int:
    """The SDK's `HttpOptions.timeout` is whole milliseconds."""
    return max(1, math.ceil(seconds * 1000))


def _name(value: Any) -> str:
    """An SDK enum member, or the raw string of a value newer than this SDK."""
    return str(getattr(value, "value", value))


def map_gemini_error(exc: BaseException, *, provider: str) -> ProviderError | None:
    """Translate what the SDK or its transport raised into our error tree; None for what is
    not the upstream's doing (a bug here), which the caller re-raises. Messages never hold
    the API key: they are Google's error message or written here."""
    if isinstance(exc, errors.APIError):
        return _map_status(exc, provider=provider)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectionFailed(f"could not connect to {provider} in time")
    if isinstance(exc, TimeoutError):  # aiohttp's total deadline and socket read timeout
        return ProviderTimeout(f"{provider} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectionFailed(f"could not connect to {provider}")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return ConnectionFailed(f"the connection to {provider} was lost before its answer")
    if isinstance(exc, aiohttp.ClientError):
        return ConnectionFailed(f"could not reach {provider} ({type(exc).__name__})")
    if isinstance(exc, errors.UnknownApiResponseError | json.JSONDecodeError):
        return MalformedResponse(f"{provider} sent a response that is not JSON")
    if isinstance(exc, pydantic.ValidationError):
        return MalformedResponse(f"{provider} sent a response of an unexpected shape")
    return None


def _map_status(exc: errors.APIError, *, provider: str) -> ProviderError:
    status = exc.code
    vendor = str(exc.message or exc.status or f"HTTP {status}")[:500]
    message = f"{provider}: {vendor}"
    reasons = {d.get("reason") for d in _details(exc)}
    # A wrong key is a 400 INVALID_ARGUMENT with reason API_KEY_INVALID from Google.
    if status in (401, 403) or "API_KEY_INVALID" in reasons:
        return AuthenticationFailed(
            f"{provider} rejected the gateway's credentials ({vendor})", status=status
        )
    if status == 429:
        return RateLimited(message, status=status, retry_after=_retry_after(exc))
    if status >= 500:
        return Unavailable(message, status=status, retry_after=_retry_after(exc))
    if status == 408:
        return ProviderTimeout(message, status=status)
    if CONTEXT_LENGTH.search(vendor):
        return ContextLengthExceeded(message, status=status)
    return BadRequest(message, status=status)


def _details(exc: errors.APIError) -> list[dict[str, Any]]:
    """The `error.details` list of Google's error body (google.rpc status details)."""
    body = exc.details
    inner = body.get("error", body) if isinstance(body, dict) else None
    details = inner.get("details") if isinstance(inner, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _retry_after(exc: errors.APIError) -> float | None:
    """Retry-After if sent, else the RetryInfo detail ("7s") Google usually sends on 429."""
    headers = getattr(exc.response, "headers", None)
    header = headers.get("retry-after") if headers is not None else None
    if (seconds := retry_after_seconds(header)) is not None:
        return seconds
    for detail in _details(exc):
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("RetryInfo") and isinstance(delay, str):
            return retry_after_seconds(delay.removesuffix("s"))
    return None
