"""`python -m app worker`: a Celery worker whose tasks are executed on one asyncio event loop.

LLM calls are slow I/O, so a worker process holds up to WORKER_CONCURRENCY prompts in flight
on one event loop (async SDKs, async database driver) rather than one per thread: Celery's
thread pool tops out near 175 completions/s per process on this kind of machine, while an event
loop can reach far more (ARCHITECTURE §5). Today this worker is CPU-bound near 100 completions/s
(about 9 ms of CPU per prompt: ORM claim, SDK call, ORM finish; `bench/celery_load.py`), which
the hot-path work of the performance issue is to lift.

Celery runs its `solo` pool; each task just hands the prompt id to the loop, waiting first while
the loop already has twice WORKER_CONCURRENCY prompts, so an overloaded worker stops taking
messages (the broker keeps them) instead of falling over.

The worker also runs the sweeper, which executes pending prompts that no message announced (the
broker was down when they were submitted) and requeues those whose worker died.

At a warm shutdown (SIGTERM, SIGINT) a task still waiting for room returns at once, and so does
every task after it: the solo pool would otherwise finish the shutdown only once a provider call
ended. Their messages are already acknowledged, so those prompts simply stay `pending` for a
sweeper, like the ones still queued on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import uuid

from celery.signals import worker_shutting_down

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
        self._closing = False
        self._waiting: set[asyncio.Task[object]] = set()  # submits waiting for room

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def submit(self, prompt_id: uuid.UUID) -> None:
        """Called by a Celery task: returns once the prompt is handed to the loop, or at once
        when the worker is shutting down (the prompt stays pending for a sweeper)."""
        if self._closing:
            return
        future = asyncio.run_coroutine_threadsafe(self._submit(prompt_id), self._loop)
        with contextlib.suppress(concurrent.futures.CancelledError):
            future.result()

    def close_intake(self) -> None:
        """The worker is shutting down: stop waiting for room. Called from Celery's signal
        handler, in the main thread, while that thread may be blocked in `submit`."""
        self._closing = True
        with contextlib.suppress(RuntimeError):  # the loop has already stopped
            self._loop.call_soon_threadsafe(self._cancel_waiting)

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()

    def _cancel_waiting(self) -> None:
        for task in self._waiting:
            task.cancel()

    async def _submit(self, prompt_id: uuid.UUID) -> None:
        assert self._runner is not None
        task = asyncio.current_task()
        assert task is not None
        if self._closing:  # closed between the check in submit() and here
            return
        self._waiting.add(task)
        try:
            await self._runner.wait_for_room()
        finally:
            self._waiting.discard(task)
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
    celery = create_celery(settings)

    def execute(prompt_id: str) -> None:
        bridge.submit(uuid.UUID(prompt_id))

    def shutting_down(**_: object) -> None:
        bridge.close_intake()

    celery.task(name=EXECUTE_TASK, ignore_result=True)(execute)

    # One line per task at INFO would be thousands a second; keep Celery's own messages.
    for noisy in (
        "celery.app.trace",
        "celery.worker.strategy",
        "httpx2",
        "httpx",
        "alembic.runtime.migration",  # the start-up check of the schema version
    ):
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
    )  # sets up logging: created before the bridge, so the first sweep's report is shown
    bridge.start()
    worker_shutting_down.connect(shutting_down, weak=False)
    try:
        worker.start()  # returns after a warm shutdown (SIGTERM / SIGINT)
    finally:
        worker_shutting_down.disconnect(shutting_down)
        bridge.stop()
    return int(worker.exitcode or 0)
