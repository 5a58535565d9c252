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
- No result backend: outcomes are in the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from celery import Celery

from app.config import Settings

logger = logging.getLogger(__name__)

EXECUTE_TASK = "prompt_manager.execute_prompt"
QUEUE = "prompts"
VISIBILITY_TIMEOUT_SECONDS = 3600
BROKER_RETRY_SECONDS = 5


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


class CeleryDispatcher:
    """Publishes a task per committed prompt. Publishing is blocking I/O, so it runs on a few
    threads; a broker that cannot be reached is logged, not raised: the prompt is committed,
    the API still answers 202, and a worker's sweeper picks the prompt up from the database.
    After a failed publish the broker is left alone for BROKER_RETRY_SECONDS, so an outage
    does not add a connect timeout to every request."""

    def __init__(self, celery: Celery, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._celery = celery
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="celery-publish")
        self._clock = clock
        self._skip_until = 0.0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def cancel(self, prompt_id: uuid.UUID) -> None:
        """Nothing runs in this process: the worker holding the prompt finds its committed
        cancellation in the database."""

    async def dispatch(self, prompt_id: uuid.UUID) -> None:
        if self._clock() < self._skip_until:
            return  # the broker was just unreachable; the sweepers will run it
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self._publish, prompt_id)
        except Exception as exc:
            self._skip_until = self._clock() + BROKER_RETRY_SECONDS
            logger.warning(
                "could not hand prompt %s to the broker (%s); workers' sweepers will run it, "
                "and the broker is tried again in %d s",
                prompt_id,
                type(exc).__name__,
                BROKER_RETRY_SECONDS,
            )

    async def ping(self) -> None:
        """Raise unless the broker accepts a connection (for /readyz)."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._connect)

    def _connect(self) -> None:
        with self._celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    def _publish(self, prompt_id: uuid.UUID) -> None:
        self._celery.send_task(EXECUTE_TASK, args=[str(prompt_id)], retry=False)
