"""The application factory. All process-wide objects are built in the lifespan, not at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app import __version__
from app.api.admin import router as admin_router
from app.api.budgets import router as budgets_router
from app.api.chat import router as openai_router
from app.api.chat import unknown_url
from app.api.docs import install_docs
from app.api.embeddings import router as embeddings_router
from app.api.fast_paths import FastPaths
from app.api.health import router as health_router
from app.api.middleware import BodyLimitMiddleware
from app.api.models import router as models_router
from app.api.paths import serve_both_forms
from app.api.problems import document_body_errors, install_error_handlers
from app.api.prompt_types import router as prompt_types_router
from app.api.prompts import router as prompts_router
from app.api.usage import router as usage_router
from app.api.webhooks import events as webhook_events
from app.api.webhooks import router as webhooks_router
from app.engine.celery_app import CeleryDispatcher, create_celery
from app.engine.health import Check, database_check
from app.engine.inline import inline_runner
from app.engine.runners import Dispatcher
from app.engine.runtime import open_runtime
from app.kit.settings import Settings
from app.services.auth.bootstrap import create_first_admin, first_run_message
from app.services.container import build_services
from app.services.webhooks.pump import create_pump

logger = logging.getLogger(__name__)

DESCRIPTION = """
Prompt Manager records every prompt sent through it, runs it on a provider in the background and
tracks it to a final status with its response, duration, token usage and cost.

**Authentication**: every endpoint under `/ai` takes `Authorization: Bearer <api key>`
(use *Authorize* above), in exactly one header: two or more are a 400
`duplicate_authorization`. Keys come from `python -m app create-user` / `create-key`, or are
printed once on the first run.

**Paths** answer with and without their trailing slash, without a redirect; this document
gives each in one form.

**Errors** are [RFC 9457](https://www.rfc-editor.org/rfc/rfc9457) problem details
(`application/problem+json`) with a stable `code` (under `/v1`, OpenAI's error shape). Any
path may also answer 405 `method_not_allowed` (with `Allow`: the methods it serves) and 431
`header_too_large` (a request line and headers over `MAX_HEADER_BYTES`).
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Builds the process's `Services` (app.state.services, the one thing the HTTP layer reads
    from the app's state) and starts whatever executes prompts here; stops it all at exit."""
    settings: Settings = app.state.settings
    async with open_runtime(settings) as runtime, AsyncExitStack() as stack:
        if settings.is_embedded:
            key = await create_first_admin(runtime.sessions)
            if key is not None:
                print(first_run_message(key, settings), flush=True)

        readiness: dict[str, Check] = {"database": database_check(runtime.sessions)}
        dispatcher: Dispatcher
        if settings.celery_broker_url is not None:
            # Workers execute and sweep; this process only records and hands over.
            celery_dispatcher = CeleryDispatcher(create_celery(settings))
            await celery_dispatcher.start()
            stack.push_async_callback(celery_dispatcher.stop)
            readiness["broker"] = celery_dispatcher.ping
            dispatcher = celery_dispatcher
        else:
            runner = runtime.runner(concurrency=settings.runner_concurrency)
            sweeper = runtime.sweeper(runner)
            await runner.start()
            stack.push_async_callback(runner.stop)
            await sweeper.start()
            stack.push_async_callback(sweeper.stop)
            pump = create_pump(settings, runtime.sessions, runtime.box)
            await pump.start()
            stack.push_async_callback(pump.stop)
            dispatcher = runner
        inline = await stack.enter_async_context(inline_runner(runtime))
        services = build_services(
            runtime, dispatcher=dispatcher, inline=inline, readiness=readiness
        )
        stack.push_async_callback(services.pending.aclose)
        if services.intake.governor is not None:
            stack.push_async_callback(services.intake.governor.aclose)
        app.state.services = services
        yield


class PromptManagerApp(FastAPI):
    """FastAPI with the fast paths (`fast_paths.py`) in front of its middleware stack: the
    requests they take skip the stack's layers too (Starlette's error middleware, FastAPI's
    telemetry and body-limit wrappers, ours: six frames around every send, each in every
    sampled /v1 stack under py-spy). Every other request goes through all of it, as before."""

    def __init__(self, *, max_body_bytes: int, max_header_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._entry = FastPaths(
            super().__call__, max_bytes=max_body_bytes, max_header_bytes=max_header_bytes
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self  # (as Starlette sets it: the fast paths read the app's state)
        await self._entry(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = PromptManagerApp(
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        title="Prompt Manager",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {"name": "prompts", "description": "Submit prompts and read their outcome."},
            {"name": "models", "description": "The models and prices of the catalogue."},
            {"name": "health", "description": "Liveness and readiness for load balancers."},
            {
                "name": "prompt-types",
                "description": "Versioned policies per prompt_type: system instruction, "
                "template, default model, limits (admins define them).",
            },
            {"name": "webhooks", "description": "Signed POSTs to your URLs when prompts finish."},
            {
                "name": "admin",
                "description": "Users, teams and their roles, API keys scoped to a team and to "
                "models (admins only).",
            },
            {
                "name": "openai-compatible",
                "description": "OpenAI's chat completions, embeddings and model list, for the "
                "official SDKs unchanged (`base_url=<this server>/v1`, `api_key=<your API key>`).",
            },
        ],
    )
    app.state.settings = settings
    install_error_handlers(app)
    document_body_errors(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
    )
    install_docs(app)
    app.include_router(prompts_router)
    app.include_router(prompt_types_router)
    app.include_router(usage_router)
    app.include_router(admin_router)
    app.include_router(budgets_router)
    app.include_router(models_router)
    app.include_router(health_router)
    app.include_router(webhooks_router)
    app.webhooks.include_router(webhook_events)
    app.include_router(openai_router)
    app.include_router(embeddings_router)
    serve_both_forms(app, not_found={"/v1": unknown_url})
    return app
