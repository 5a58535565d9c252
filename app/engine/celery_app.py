"""Celery: how the API hands prompts to worker processes, and how the broker is configured.

The guarantee comes from the database, not the broker: the row is the job, a claim is a lease,
and every worker's sweeper recovers what a broker or a worker dropped. The broker is only the
fast path that wakes a worker within milliseconds. Hence these choices:

- `task_acks_late=False`: a task only hands the prompt id to the worker's event loop, which
  runs thousands at once; the message is acknowledged on that hand-over. If the worker dies
  afterwards, the prompt's lease expires and a sweeper requeues it; late acknowledgement with
  reject-on-worker-lost would instead suit a pool that runs one blocking task per slot.
- Messages reserved but not started are redelivered after `visibility_timeout` (an hour). By
  then the sweepers have long since run those prompts (REDISPATCH_AFTER_SECONDS), so the late
  copy finds nothing to claim: a duplicate delivery is a no-op by construction.
- Ordering: provider call (PROVIDER_TIMEOUT_SECONDS, 60 s by default) < lease (LEASE_SECONDS,
  60 s, renewed every 20 s while running, so only a dead worker's lease expires) <
  visibility timeout (3,600 s); the sweeper looks every SWEEP_INTERVAL_SECONDS (15 s).
- A worker never gives up on the broker (`broker_connection_max_retries=None`; Celery's default
  of 100 retries, backing off to 30 s, ends the worker after about 45 minutes of outage, and
  its sweeper with it, although the database alone is enough to run prompts).
- Prefetch (WORKER_PREFETCH_MULTIPLIER, 200): the solo pool counts as one slot, so Celery's
  default of 4 reserved messages would starve a loop that runs a thousand prompts; reserved
  messages are acknowledged once handed over, and their prompts are in the database anyway.
- No result backend: outcomes are in the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial

from celery import Celery

from app.engine.health import Check
from app.kit.group_commit import GroupCommit
from app.kit.settings import Settings

logger = logging.getLogger(__name__)

EXECUTE_TASK = "prompt_manager.execute_prompt"
QUEUE = "prompts"
VISIBILITY_TIMEOUT_SECONDS = 3600
BROKER_RETRY_SECONDS = 5
MAX_PROMPTS_PER_MESSAGE = 50


def create_celery(settings: Settings) -> Celery:
    celery = Celery("prompt_manager", set_as_current=False)
    celery.conf.update(
        broker_url=settings.celery_broker_url,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # retry forever: the sweeper runs meanwhile
        broker_connection_timeout=2,
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        },
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=False,
        task_default_queue=QUEUE,
        worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # Only concerns late-acknowledged tasks (there are none); set, it silences the
        # deprecation warning Celery logs at every lost broker connection.
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    return celery


def broker_check(celery: Celery, executor: Executor | None = None) -> Check:
    """A readiness check that raises unless the broker accepts a connection. Connecting is
    blocking I/O, so it runs on `executor` (the loop's default one if None)."""

    async def check() -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, partial(_connect, celery))

    return check


def _connect(celery: Celery) -> None:
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


class CeleryDispatcher:
    """Publishes committed prompts as tasks. A broker that cannot be reached is logged, not
    raised: the prompt is committed, the API still answers 202, and a worker's sweeper picks it
    up from the database. After a failed publish the broker is left alone for
    BROKER_RETRY_SECONDS, so an outage does not add a connect timeout to every request.

    Publishing is blocking I/O, so it runs on a thread, one message at a time: the prompts
    committed while a message is being published go out together in the next one (up to
    MAX_PROMPTS_PER_MESSAGE), the way group commit batches writes. A lone request still gets a
    message of its own at once; under load, each message costs the API and the worker's Celery
    consumer (bench/results/design.md) once for many prompts.
    """

    def __init__(self, celery: Celery, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._celery = celery
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="celery-publish")
        self._clock = clock
        self._skip_until = 0.0
        self._broker_check = broker_check(celery, self._pool)
        self._outbox = GroupCommit(self._publish_many, max_batch=MAX_PROMPTS_PER_MESSAGE)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self._outbox.aclose()
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def cancel(self, prompt_id: uuid.UUID) -> None:
        """Nothing runs in this process: the worker holding the prompt finds its committed
        cancellation in the database."""

    room = None  # the broker holds what workers have no room for

    async def dispatch(self, prompt_id: uuid.UUID, owner: uuid.UUID | None = None) -> bool:
        return await self._outbox.submit((prompt_id, owner))

    async def _publish_many(
        self, prompt_ids: Sequence[tuple[uuid.UUID, uuid.UUID | None]]
    ) -> list[bool]:
        if self._clock() < self._skip_until:
            return [False] * len(prompt_ids)  # the broker was just unreachable
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self._publish, prompt_ids)
        except Exception as exc:
            self._skip_until = self._clock() + BROKER_RETRY_SECONDS
            logger.warning(
                "could not hand %d prompts to the broker (%s); workers' sweepers will run "
                "them, and the broker is tried again in %d s",
                len(prompt_ids),
                type(exc).__name__,
                BROKER_RETRY_SECONDS,
            )
            return [False] * len(prompt_ids)
        return [True] * len(prompt_ids)

    async def ping(self) -> None:
        """Raise unless the broker accepts a connection (for /readyz)."""
        await self._broker_check()

    def _publish(self, prompts: Sequence[tuple[uuid.UUID, uuid.UUID | None]]) -> None:
        """One task, its arguments `[prompt id, owner]` pairs (see `execute` in
        app/worker/main.py: the owner lets a worker share its capacity fairly between users)."""
        args = [[str(i), str(owner) if owner else None] for i, owner in prompts]
        self._celery.send_task(EXECUTE_TASK, args=args, retry=False)
