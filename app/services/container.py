"""The services a process serves requests with, built once and typed.

The API process builds one `Services` in its lifespan (app/main.py) and the HTTP layer
reaches it through one dependency (`app/api/deps.py` `get_services`; the fast paths read
the same object), so every call through it is checked by mypy, and there is one place to
look for what a request can use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.db.database import SessionFactory
from app.engine.events import EventBus
from app.engine.health import Check
from app.engine.idempotency import IdempotencyKeys
from app.engine.inline import InlineRunner
from app.engine.recorder import Recorder
from app.engine.runners import Dispatcher
from app.engine.runtime import Runtime
from app.kit.outbound import OutboundPolicy, policy_for
from app.kit.sealing import SecretBox
from app.kit.settings import Settings
from app.providers.registry import ModelResolver
from app.services.auth.authenticator import Authenticator
from app.services.caps import PendingGauge
from app.services.chat.service import ChatService
from app.services.embeddings.service import EmbeddingService
from app.services.intake import Intake
from app.services.limits.governor import Governor
from app.services.prompt_types.cache import PromptTypeCache
from app.services.prompts.live import StreamSlots
from app.services.prompts.service import PromptService


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    sessions: SessionFactory
    recorder: Recorder
    bus: EventBus  # live prompt events (status changes, text deltas)
    models: ModelResolver  # model names → provider routes, from the catalogue
    dispatcher: Dispatcher  # hands recorded prompts to whoever executes them
    box: SecretBox  # seals and opens the stored webhook secrets
    outbound: OutboundPolicy  # where webhooks may be sent (OUTBOUND_ALLOWLIST)
    auth: Authenticator
    prompt_types: PromptTypeCache
    pending: PendingGauge  # MAX_PENDING_PER_USER
    streams: StreamSlots  # MAX_STREAMS_PER_USER
    idempotency: IdempotencyKeys
    intake: Intake
    prompts: PromptService
    chat: ChatService
    embeddings: EmbeddingService
    readiness: Mapping[str, Check]  # what /readyz checks


def build_services(
    runtime: Runtime,
    *,
    dispatcher: Dispatcher,
    inline: InlineRunner,
    readiness: Mapping[str, Check],
) -> Services:
    """The services over a process's `runtime`, with the `dispatcher` that executes its
    prompts (an embedded runner, or Celery's) and the `inline` runner of its chats. Nothing
    here starts a task or opens a connection: `close` the pending gauge at shutdown."""
    settings = runtime.settings
    sessions = runtime.sessions
    prompt_types = PromptTypeCache(sessions)
    pending = PendingGauge(sessions, limit=settings.max_pending_per_user)
    intake = Intake(
        models=runtime.models,
        prompt_types=prompt_types,
        pending=pending,
        max_prompt_chars=settings.max_prompt_chars,
        drop_params=settings.drop_params,
        governor=Governor(runtime.recorder.ledger),
    )
    idempotency = IdempotencyKeys(
        sessions=sessions, ttl_seconds=settings.idempotency_key_ttl_seconds
    )
    return Services(
        settings=settings,
        sessions=sessions,
        recorder=runtime.recorder,
        bus=runtime.bus,
        models=runtime.models,
        dispatcher=dispatcher,
        box=runtime.box,
        outbound=policy_for(settings.outbound_allowlist),
        auth=Authenticator(sessions, cache_seconds=settings.auth_cache_seconds),
        prompt_types=prompt_types,
        pending=pending,
        streams=StreamSlots(settings.max_streams_per_user),
        idempotency=idempotency,
        intake=intake,
        prompts=PromptService(
            intake=intake,
            recorder=runtime.recorder,
            dispatcher=dispatcher,
            keys=idempotency,
            sessions=sessions,
        ),
        chat=ChatService(
            intake=intake,
            recorder=runtime.recorder,
            runner=inline,
            keys=idempotency,
            bus=runtime.bus,
            sessions=sessions,
            replay_wait_seconds=settings.prefer_wait_max_seconds,
        ),
        embeddings=EmbeddingService(intake=intake, recorder=runtime.recorder, runner=inline),
        readiness=readiness,
    )
