"""Runs prompts in the API process that received them, for a client that waits for the answer.

`/v1/chat/completions` answers in the same HTTP exchange, so a queue round trip (a Celery
worker, or the embedded runner's queue) would only add latency: the request's own process
claims the prompt and runs the executor's loop itself. What a runner does for the prompts it
holds is done here too, once per process for all of them rather than once per request: their
leases are renewed (so the sweeper never takes a long stream for a lost one), and a
cancellation requested through `POST /ai/prompts/{id}/cancel` stops them like any other.

A prompt whose execution is cancelled here (its client went away, its cancellation was
requested, or the process is stopping) ends `cancelled`: nobody is waiting for it any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from app.engine.executor import DeltaSink, Execution, Outcome, carried_through, run_prompt
from app.engine.records import Claim
from app.engine.runners import CANCEL_POLL_SECONDS, keep_leases, watch_cancellations
from app.engine.runtime import Runtime
from app.kit.dbapi import lost_connection

logger = logging.getLogger(__name__)


class InlineRunner:
    def __init__(
        self,
        execution: Execution,
        *,
        lease_seconds: float,
        cancel_poll_seconds: float = CANCEL_POLL_SECONDS,
    ) -> None:
        self._execution = execution
        self.lease_seconds = lease_seconds
        self._cancel_poll = cancel_poll_seconds
        self._held: dict[uuid.UUID, asyncio.Task[Outcome]] = {}
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        recorder = self._execution.recorder
        self._background = [
            asyncio.create_task(
                keep_leases(recorder, self._held.keys, lease_seconds=self.lease_seconds),
                name="inline-lease-renewer",
            ),
            asyncio.create_task(
                watch_cancellations(
                    recorder, self._held.keys, self._stop, poll_seconds=self._cancel_poll
                ),
                name="inline-cancel-watcher",
            ),
        ]

    async def stop(self) -> None:
        """Stop what still runs (each ends `cancelled`, its call on the record)."""
        for task in self._background:
            task.cancel()
        held = list(self._held.values())
        for execution in held:
            execution.cancel()
        await asyncio.gather(*self._background, *held, return_exceptions=True)

    def run(self, claim: Claim, *, on_delta: DeltaSink | None = None) -> asyncio.Task[Outcome]:
        """Execute a claim this process holds, in a task of its own: cancelling the task
        abandons the provider call, records it, and ends the prompt `cancelled`."""
        task = asyncio.create_task(self._execute(claim, on_delta), name=f"prompt-{claim.prompt_id}")
        self._held[claim.prompt_id] = task
        return task

    async def _execute(self, claim: Claim, on_delta: DeltaSink | None) -> Outcome:
        recorder = self._execution.recorder
        try:
            return await run_prompt(
                claim, execution=self._execution, on_delta=on_delta, cancelled_outcome="cancelled"
            )
        except asyncio.CancelledError:
            await carried_through(recorder.finish_cancelled(claim))
            raise
        except Exception as exc:
            # A bug, or a request it cannot handle: the client gets a 500 for it, so nothing
            # runs it again behind their back (as a lost runner's prompt would be): `failed`.
            if not lost_connection(exc):
                logger.exception("executing prompt %s failed unexpectedly", claim.prompt_id)
                failed = recorder.finish(
                    claim,
                    attempt=None,
                    error_code="internal_error",
                    error_message=f"Processing this prompt failed ({type(exc).__name__}); "
                    "the server's log has the details.",
                )
                try:
                    await carried_through(failed)
                except Exception:  # (its lease expires, and the sweeper takes it)
                    logger.warning("could not record the failure of prompt %s", claim.prompt_id)
            raise
        finally:
            self._held.pop(claim.prompt_id, None)

    def _stop(self, prompt_id: uuid.UUID) -> None:
        task = self._held.get(prompt_id)
        if task is not None and not task.done() and not task.cancelling():
            task.cancel()


@contextlib.asynccontextmanager
async def inline_runner(runtime: Runtime) -> AsyncIterator[InlineRunner]:
    """The API process's InlineRunner, for the life of the process."""
    runner = InlineRunner(runtime.execution, lease_seconds=runtime.settings.lease_seconds)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()
