"""`python -m app worker`: a Celery worker whose tasks are executed on one asyncio event loop.

LLM calls are slow I/O, so a worker process holds up to WORKER_CONCURRENCY prompts in flight
on one event loop (async SDKs, async database driver) rather than one per thread: Celery's
thread pool tops out near 175 completions/s per process on this kind of machine, an event loop
reaches far more (ARCHITECTURE §5). Celery runs its `solo` pool; each task just hands the prompt
id to the loop, waiting first while the loop already has twice WORKER_CONCURRENCY prompts, so an
overloaded worker stops taking messages (the broker keeps them) instead of falling over.

The worker also runs the sweeper, which executes pending prompts that no message announced (the
broker was down when they were submitted) and requeues those whose worker died.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid

from app.config import Settings
from app.jobs.celery_app import EXECUTE_TASK, create_celery
from app.jobs.dispatcher import EmbeddedRunner
from app.runtime import open_runtime

logger = logging.getLogger(__name__)


class EventLoopBridge:
    """The runtime, runner and sweeper on an event loop in a thread of their own."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="prompt-loop", daemon=True)
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._runner: EmbeddedRunner | None = None
        self._failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def submit(self, prompt_id: uuid.UUID) -> None:
        """Called by a Celery task: returns once the prompt is handed to the loop."""
        asyncio.run_coroutine_threadsafe(self._submit(prompt_id), self._loop).result()

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()

    async def _submit(self, prompt_id: uuid.UUID) -> None:
        assert self._runner is not None
        await self._runner.wait_for_room()
        await self._runner.dispatch(prompt_id)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start(), or logged if after it
            self._failure = exc
            logger.exception("the worker's event loop failed")
        finally:
            self._ready.set()
            self._loop.close()

    async def _main(self) -> None:
        settings = self._settings
        self._stopping = asyncio.Event()
        async with open_runtime(settings) as runtime:
            concurrency = settings.worker_concurrency
            runner = runtime.runner(concurrency=concurrency, max_backlog=2 * concurrency)
            sweeper = runtime.sweeper(runner)
            await runner.start()
            await sweeper.start()
            self._runner = runner
            self._ready.set()
            try:
                await self._stopping.wait()
            finally:
                await sweeper.stop()
                await runner.stop()  # a grace for running prompts, then hands the rest back


def run_worker(settings: Settings) -> int:
    if settings.celery_broker_url is None:
        raise SystemExit("CELERY_BROKER_URL is not set: there is no queue for a worker to read")
    bridge = EventLoopBridge(settings)
    bridge.start()
    celery = create_celery(settings)

    def execute(prompt_id: str) -> None:
        bridge.submit(uuid.UUID(prompt_id))

    celery.task(name=EXECUTE_TASK, ignore_result=True)(execute)

    # One line per task at INFO would be thousands a second; keep Celery's own messages.
    for noisy in ("celery.app.trace", "celery.worker.strategy", "httpx2", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    worker = celery.Worker(
        pool="solo",
        concurrency=1,
        hostname=f"prompt-worker-{os.getpid()}@{socket.gethostname()}",
        loglevel=settings.log_level.upper(),
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        quiet=True,
    )
    try:
        worker.start()  # returns after a warm shutdown (SIGTERM / SIGINT)
    finally:
        bridge.stop()
    return int(worker.exitcode or 0)
