"""The application factory. All process-wide objects are built in the lifespan, not at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.auth.bootstrap import create_first_admin, first_run_message
from app.config import Settings
from app.db.database import create_engine, create_session_factory
from app.db.migrations import ensure_migrated
from app.docs import install_docs
from app.errors import install_error_handlers
from app.health import router as health_router
from app.jobs.dispatcher import EmbeddedRunner
from app.jobs.executor import Execution, execute_prompt
from app.jobs.sweeper import Sweeper
from app.middleware import BodyLimitMiddleware
from app.prompts.recorder import Recorder
from app.prompts.router import router as prompts_router
from app.providers.catalogue import load_catalogue
from app.providers.registry import ModelRouter, build_providers
from app.providers.resilience import CircuitBreaker, RetryPolicy
from app.providers.router import router as models_router

logger = logging.getLogger(__name__)

DESCRIPTION = """
Prompt Manager records every prompt sent through it, runs it on a provider in the background and
tracks it to a final status with its response, duration, token usage and cost.

**Authentication**: every endpoint under `/ai` takes `Authorization: Bearer <api key>`
(use *Authorize* above). Keys come from `python -m app create-user` / `create-key`, or are
printed once on the first run.

**Errors** are [RFC 9457](https://www.rfc-editor.org/rfc/rfc9457) problem details
(`application/problem+json`) with a stable `code`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine: AsyncEngine = create_engine(settings)
    try:
        await ensure_migrated(engine)
        sessions = create_session_factory(engine)
        catalogue = load_catalogue(settings.model_catalogue_path)
        providers = build_providers(settings, catalogue)
        model_router = ModelRouter(providers, catalogue)
        recorder = Recorder(sessions)
        execution = Execution(
            recorder=recorder,
            router=model_router,
            policy=RetryPolicy(
                max_retries=settings.retry_max_retries,
                base_delay=settings.retry_base_delay_seconds,
                max_delay=settings.retry_max_delay_seconds,
                retry_after_cap=settings.retry_after_cap_seconds,
            ),
            breaker=CircuitBreaker(
                threshold=settings.circuit_failure_threshold,
                cooldown=settings.circuit_cooldown_seconds,
            ),
        )
        runner = EmbeddedRunner(
            partial(execute_prompt, execution=execution),
            recorder=recorder,
            concurrency=settings.runner_concurrency,
            lease_seconds=settings.lease_seconds,
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
        )
        sweeper = Sweeper(
            recorder,
            runner,
            interval_seconds=settings.sweep_interval_seconds,
            redispatch_after_seconds=settings.redispatch_after_seconds,
            max_attempts=settings.max_attempts,
        )
        app.state.sessions = sessions
        app.state.recorder = recorder
        app.state.model_router = model_router
        app.state.dispatcher = runner

        if settings.is_embedded:
            key = await create_first_admin(sessions)
            if key is not None:
                print(first_run_message(key, settings), flush=True)

        await runner.start()
        await sweeper.start()
        try:
            yield
        finally:
            await sweeper.stop()
            await runner.stop()
            for provider in providers.values():
                await provider.aclose()
    finally:
        await engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="Prompt Manager",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {"name": "prompts", "description": "Submit prompts and read their outcome."},
            {"name": "models", "description": "The models and prices of the catalogue."},
            {"name": "health", "description": "Liveness for load balancers."},
        ],
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    install_docs(app)
    app.include_router(prompts_router)
    app.include_router(models_router)
    app.include_router(health_router)
    return app
