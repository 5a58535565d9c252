"""The two answers of /v1/chat/completions, each produced while watching the client.

A chat completion executes while its client waits, so the response is written as the
execution goes (rather than by the route's handler): a JSON `chat.completion`, or server-sent
`chat.completion.chunk`s. Meanwhile the connection is watched for the client going away
(ASGI `http.disconnect`), whatever the server and its ASGI version (Starlette's own
StreamingResponse only listens for it under ASGI < 2.4, and only while it streams): a client
that leaves cancels the execution, which closes the upstream call, records it, and ends the
prompt `cancelled`.

A stream's status line is sent with its first text, not before: a failure before any text
(the provider's 429 after the retries, an unknown upstream model, …) is still an HTTP error
the SDKs turn into their usual exceptions; one after it is an `error` event in the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api import openai_errors as errors
from app.engine.executor import Outcome, carried_through
from app.kit.errors import AppError
from app.providers.base import Choice, ChoiceText, Completion, Delta, ToolCallDelta
from app.services.chat.service import ChatRun, completion_json, finish_reason, usage

logger = logging.getLogger(__name__)

PROMPT_ID_HEADER = "X-Prompt-Id"
DROPPED_HEADER = "X-Dropped-Params"  # the fields left out for the model (drop_params)


class _WatchedResponse(Response):
    """Runs `respond` until it ends or the client goes away, whichever is first; in both
    cases the execution has ended (and is recorded) when this returns.

    `respond` runs in the request's own task, which a watcher cancels if the client leaves:
    one extra task per request rather than three (one each for `respond`, the watcher and
    the clean-up)."""

    def __init__(self, run: ChatRun) -> None:
        super().__init__()  # the attributes a Response has; what it sends is `respond`'s
        self.run = run
        self.headers_out = {PROMPT_ID_HEADER: str(run.prompt.id)}
        if run.headers:
            self.headers_out.update(run.headers)
        if dropped := run.dropped_params:
            self.headers_out[DROPPED_HEADER] = ", ".join(dropped)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        left = False

        def gone() -> None:
            nonlocal left
            left = True
            task.cancel()

        watcher = asyncio.create_task(_disconnected(receive, gone))
        try:
            await self.respond(scope, receive, send)
        except asyncio.CancelledError:
            if not left or task.uncancel() > 0:
                raise  # cancelled from elsewhere (the server is stopping): let it through
        except OSError:
            pass  # the client went away while it was written to
        finally:
            watcher.cancel()
            if self.run.task is not None and not self.run.task.done():
                await carried_through(self.run.cancel())

    async def respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError

    async def error(self, scope: Scope, exc: Exception) -> Response:
        """The error in OpenAI's shape, the same as the route would have answered."""
        if isinstance(exc, AppError):
            response: Response = errors.app_error_response(exc)
        else:
            response = await errors.handle(Request(scope), exc)
        response.headers.update(self.headers_out)
        return response


class ChatCompletionResponse(_WatchedResponse):
    """`stream: false`: one `chat.completion` once the execution has ended."""

    async def respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            outcome = await _outcome(self.run)
            body = completion_json(self.run, outcome)
            response: Response = Response(
                body, media_type="application/json", headers=self.headers_out
            )
        except Exception as exc:
            response = await self.error(scope, exc)
        await response(scope, receive, send)


class ChatStreamResponse(_WatchedResponse):
    """`stream: true`: `chat.completion.chunk`s as the text arrives, then `[DONE]`."""

    async def respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        run = self.run
        try:
            first = await run.next_event()
        except Exception as exc:
            response = await self.error(scope, exc)
            await response(scope, receive, send)
            return
        headers = {
            **self.headers_out,
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each chunk on at once
        }
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            }
        )

        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await emit(self.chunk({"role": "assistant", "content": ""}))
        sent: set[int] = set()  # the answers whose text was streamed, and whose calls were
        called: set[int] = set()
        item: Delta | Outcome = first
        try:
            while not isinstance(item, Outcome):
                if isinstance(item, str):
                    await emit(self.chunk({"content": item}))
                    sent.add(0)
                elif isinstance(item, ChoiceText):
                    if item.choice not in sent and item.choice not in called:
                        await emit(self.chunk({"role": "assistant", "content": ""}, item.choice))
                    await emit(self.chunk({"content": item.text}, item.choice))
                    sent.add(item.choice)
                else:
                    if item.choice and item.choice not in sent and item.choice not in called:
                        await emit(self.chunk({"role": "assistant", "content": ""}, item.choice))
                    await emit(self.chunk(self.tool_delta(item), item.choice))
                    called.add(item.choice)
                item = await run.next_event()
            completion = item.completion
            assert completion is not None
            await self.finish(emit, 0, completion, sent, called)
            for index, choice in enumerate(completion.choices, 1):
                if index not in sent and index not in called:
                    await emit(self.chunk({"role": "assistant", "content": ""}, index))
                await self.finish(emit, index, choice, sent, called)
            if run.include_usage:
                await emit(self.event(choices=[], usage=usage(completion)))
            await emit(b"data: [DONE]\n\n")
        except AppError as exc:
            await emit(errors.error_event(exc))
        except Exception as exc:
            logger.exception("chat stream %s failed", run.prompt.id)
            await emit(errors.error_event(AppError(f"The stream failed ({type(exc).__name__}).")))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def finish(
        self,
        emit: Callable[[bytes], Awaitable[None]],
        index: int,
        answer: Completion | Choice,
        sent: set[int],
        called: set[int],
    ) -> None:
        """The end of answer `index`: what was not streamed of it (the text of a provider
        that sent it in one piece; a replay's text and calls, as recorded), its refusal, and
        the chunk with its finish reason."""
        if index not in sent and answer.text:
            await emit(self.chunk({"content": answer.text}, index))
        if index not in called:
            for position, call in enumerate(answer.tool_calls):
                function = call["function"]
                piece = ToolCallDelta(position, call["id"], function["name"], function["arguments"])
                await emit(self.chunk(self.tool_delta(piece), index))
        if answer.refusal:
            await emit(self.chunk({"refusal": answer.refusal}, index))
        await emit(self.chunk({}, index, finish_reason=finish_reason(self.run, answer)))

    def tool_delta(self, piece: ToolCallDelta) -> dict[str, Any]:
        """A tool call's piece as OpenAI streams it: the first with its id, type and name (and
        maybe some arguments), the next ones with more arguments only; for the legacy
        `functions`, as a `function_call` delta."""
        function: dict[str, Any] = {"arguments": piece.arguments}
        if piece.name is not None:
            function = {"name": piece.name, "arguments": piece.arguments}
        if self.run.legacy_functions:
            return {"function_call": function}
        call: dict[str, Any] = {"index": piece.index}
        if piece.id is not None:
            call |= {"id": piece.id, "type": "function"}
        call["function"] = function
        return {"tool_calls": [call]}

    def chunk(
        self, delta: dict[str, Any], index: int = 0, *, finish_reason: str | None = None
    ) -> bytes:
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
        extra = {"usage": None} if self.run.include_usage else {}
        return self.event(choices=[choice], **extra)

    def event(self, **fields: Any) -> bytes:
        run = self.run
        chunk = {
            "id": run.completion_id,
            "object": "chat.completion.chunk",
            "created": run.created,
            "model": run.prompt.model,
            **fields,
        }
        return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()


async def _outcome(run: ChatRun) -> Outcome:
    while True:
        item = await run.next_event()
        if isinstance(item, Outcome):
            return item


async def _disconnected(receive: Receive, then: Callable[[], None]) -> None:
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # nothing more to watch; the response reports its own failures
        return
    then()
