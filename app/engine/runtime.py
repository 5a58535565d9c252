"""The objects a process needs to record and execute prompts, built once.

The API's lifespan and the Celery worker both open a `Runtime`, so the same code runs in both
modes; only who executes differs (the API's embedded runner, or a worker's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.database import SessionFactory, create_engine, create_session_factory
from app.db.migrations import ensure_migrated
from app.engine.events import EventBus, LocalBus, RedisBus
from app.engine.executor import Execution, execute_prompt
from app.engine.recorder import Recorder
from app.engine.runners import Dispatcher, EmbeddedRunner
from app.engine.sweeper import Sweeper
from app.kit.sealing import SecretBox
from app.kit.settings import Settings
from app.providers.catalogue import load_catalogue
from app.providers.registry import ModelResolver, build_providers
from app.providers.resilience import CircuitBreaker, RetryPolicy


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: SessionFactory
    recorder: Recorder
    bus: EventBus
    models: ModelResolver  # model names → provider routes
    execution: Execution
    box: SecretBox  # opens and seals the stored webhook secrets

    def runner(
        self,
        *,
        concurrency: int,
        max_backlog: int | None = None,
    ) -> EmbeddedRunner:
        settings = self.settings
        return EmbeddedRunner(
            partial(execute_prompt, execution=self.execution),
            recorder=self.recorder,
            concurrency=concurrency,
            lease_seconds=settings.lease_seconds,
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
            max_backlog=max_backlog,
            max_attempts=settings.max_attempts,
        )

    def sweeper(self, dispatcher: Dispatcher) -> Sweeper:
        settings = self.settings
        return Sweeper(
            self.recorder,
            dispatcher,
            interval_seconds=settings.sweep_interval_seconds,
            redispatch_after_seconds=settings.redispatch_after_seconds,
            max_attempts=settings.max_attempts,
        )


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    box = settings.secret_box()
    engine = create_engine(settings)
    try:
        await ensure_migrated(engine)
        sessions = create_session_factory(engine)
        catalogue = load_catalogue(settings.model_catalogue_path)
        providers = build_providers(settings, catalogue)
        router = ModelResolver(providers, catalogue)
        bus: EventBus = RedisBus(settings.events_url) if settings.events_url else LocalBus()
        recorder = Recorder(engine, bus=bus)
        execution = Execution(
            recorder=recorder,
            router=router,
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
            bus=bus,
        )
        try:
            yield Runtime(settings, engine, sessions, recorder, bus, router, execution, box)
        finally:
            await recorder.aclose()
            await bus.aclose()
            for provider in providers.values():
                await provider.aclose()
    finally:
        await engine.dispose()
