"""`python -m app worker`: a Celery worker whose tasks are executed on one asyncio event loop.

LLM calls are slow I/O, so a worker process holds up to WORKER_CONCURRENCY prompts in flight
on one event loop (async HTTP, async database driver) rather than one per thread: Celery's
thread pool tops out far lower per process, while this worker holds WORKER_CONCURRENCY calls
in flight (`bench/celery_load.py`; figures in bench/results/design.md). What made that
possible: claims and outcomes written by group commit (`app/kit/group_commit.py`), the
direct HTTP path for OpenAI-compatible providers, one broker message for many prompts, and a
hand-over from Celery's thread that needs no round trip.

Celery runs its `solo` pool; each task posts its prompts (id and owner) to the loop without
waiting for room: the runner holds at most twice WORKER_CONCURRENCY prompts, and when it is full
it leaves further prompts of owners who already have some there `pending` in the database and
claims them back, owners in turn, once it has room (app/engine/runners.py). A worker that
stopped reading messages while full would leave the broker's queue first in, first out: one
user's flood ahead of everyone else's next prompt. This way a new user's prompt is taken at
once and runs at the next free slot, and the worker still holds a bounded number of prompts.

The worker also runs the sweeper, which executes pending prompts that no message announced (the
broker was down when they were submitted) and requeues those whose worker died, and the webhook
pump, which announces finished prompts to their owners' endpoints (`app/services/webhooks/pump.py`).

At a warm shutdown (SIGTERM, SIGINT) a task still waiting to hand its prompts to the loop
returns at once, and so does every task after it: the solo pool would otherwise finish the
shutdown only once a provider call ended. Their messages are already acknowledged, so those
prompts simply stay `pending` for a sweeper, like the ones still queued on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid

from celery.signals import worker_shutting_down

from app.engine.celery_app import EXECUTE_TASK, broker_check, create_celery
from app.engine.health import Check, database_check
from app.engine.runners import EmbeddedRunner
from app.engine.runtime import open_runtime
from app.kit.settings import Settings
from app.services.webhooks.pump import create_pump
from app.worker.health import bind_health_port, serve_health

logger = logging.getLogger(__name__)

ROOM_POLL_SECONDS = 0.2  # how soon a Celery task waiting for room notices a shutdown


def parse_prompt(item: object) -> tuple[uuid.UUID, uuid.UUID | None]:
    """One argument of an execute task: `[prompt id, owner]`, or a bare prompt id as sent by
    versions before owners travelled with it."""
    if isinstance(item, str):
        return uuid.UUID(item), None
    if isinstance(item, list | tuple) and len(item) == 2:
        prompt_id, owner = item
        return uuid.UUID(str(prompt_id)), uuid.UUID(str(owner)) if owner else None
    raise ValueError(f"not a prompt: {item!r}")


class EventLoopBridge:
    """The runtime, runner, sweeper and health server on an event loop in a thread of their
    own."""

    def __init__(
        self,
        settings: Settings,
        *,
        health_socket: socket.socket | None = None,
        broker_check: Check | None = None,
    ) -> None:
        self._settings = settings
        self._health_socket = health_socket  # bound by run_worker; None serves no /healthz
        self._broker_check = broker_check
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="prompt-loop", daemon=True)
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._runner: EmbeddedRunner | None = None
        self._failure: BaseException | None = None
        self._closing = False
        # Hand-over without a round trip per task: Celery's thread counts what it has posted
        # to the loop and not yet seen arrive, and waits only while that alone fills the room
        # (a loop that has fallen far behind); the runner shares its own room between owners.
        self._room = threading.Condition()
        self._in_transit = 0
        self._limit = 2 * settings.worker_concurrency

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def submit(self, prompt_id: uuid.UUID, owner: uuid.UUID | None = None) -> None:
        """Called by a Celery task: posts the prompt to the loop, or returns at once when the
        worker is shutting down (the prompt stays pending for a sweeper)."""
        assert self._runner is not None
        with self._room:
            while not self._closing and self._in_transit >= self._limit:
                self._room.wait(ROOM_POLL_SECONDS)
            if self._closing:
                return
            self._in_transit += 1
        self._loop.call_soon_threadsafe(self._arrive, prompt_id, owner)

    def close_intake(self) -> None:
        """The worker is shutting down: stop waiting for room. Called from Celery's signal
        handler, in the main thread, while that thread may be waiting in `submit` (which looks
        again within ROOM_POLL_SECONDS; no lock is taken here, in a signal handler)."""
        self._closing = True

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()

    def _arrive(self, prompt_id: uuid.UUID, owner: uuid.UUID | None) -> None:
        """On the loop: a prompt posted by `submit` joins the runner."""
        assert self._runner is not None
        if not self._closing:
            self._runner.dispatch_nowait(prompt_id, owner)
        with self._room:
            self._in_transit -= 1
            self._room.notify()

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
            runner = runtime.runner(concurrency=concurrency, max_backlog=self._limit)
            sweeper = runtime.sweeper(runner)
            await runner.start()
            await sweeper.start()
            pump = create_pump(settings, runtime.sessions, runtime.box)
            await pump.start()
            self._runner = runner
            checks = {"database": database_check(runtime.sessions)}
            if self._broker_check is not None:
                checks["broker"] = self._broker_check
            try:
                async with serve_health(self._health_socket, checks):
                    self._ready.set()
                    await self._stopping.wait()
            finally:
                await pump.stop()
                await sweeper.stop()
                await runner.stop()  # a grace for running prompts, then hands the rest back


def run_worker(settings: Settings) -> int:
    if settings.celery_broker_url is None:
        raise SystemExit("CELERY_BROKER_URL is not set: there is no queue for a worker to read")
    health_socket = bind_health_port(settings)  # a port in use ends the worker here, in a line
    celery = create_celery(settings)
    bridge = EventLoopBridge(
        settings, health_socket=health_socket, broker_check=broker_check(celery)
    )

    def execute(*prompts: object) -> None:
        """One message carries the prompts an API process committed meanwhile (see
        CeleryDispatcher), each handed to the loop."""
        for item in prompts:
            try:
                prompt_id, owner = parse_prompt(item)
            except ValueError:
                logger.warning("ignored a malformed prompt in a task: %.80r", item)
                continue
            bridge.submit(prompt_id, owner)

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
