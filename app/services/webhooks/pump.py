"""The webhook pump: one asyncio task per process that announces finished prompts.

Started next to the sweeper (the API's lifespan in embedded mode, each Celery worker in
production). Every WEBHOOK_POLL_SECONDS a pass
1. creates the deliveries of prompts that finished since the last pass (`queue.py` explains
   why nothing is missed or created twice, with any number of processes pumping);
2. claims as many due deliveries as it has free slots (WEBHOOK_CONCURRENCY) and sends each in
   a task of its own, so a slow or dead receiver holds one slot for at most
   WEBHOOK_TIMEOUT_SECONDS and delays nothing else: not the other deliveries, not the API, not
   the prompts running on the same event loop.

POSTs go through one guarded outbound client per process (`app/kit/outbound.py`): no address on
the server's own networks unless OUTBOUND_ALLOWLIST allows it, no redirects. What an attempt
records is the receiver's HTTP status, or one of a few fixed words: `timeout`, `unreachable`
(a refused connection, a dropped one, a name that does not resolve: all the same, so that the
log cannot tell an open port from a closed one), `blocked` (the guard's reason). Never an
exception's name or a socket's message.

Whatever else goes wrong while building or sending a delivery (a prompt row that cannot be
turned into its message, say) is a failed attempt too, `internal_error`, recorded and retried
like the others until WEBHOOK_MAX_ATTEMPTS: a poisoned delivery ends `failed` instead of being
claimed again every lease. Its traceback is logged the first time, then one line per attempt.

The endpoint's URL and secret are never logged (a URL may carry a token of its own); log lines
name the delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

import aiohttp

from app import __version__
from app.db.base import utcnow
from app.db.database import SessionFactory
from app.kit.dbapi import lost_connection
from app.kit.outbound import OutboundClient, OutboundPolicy, OutboundRefused, policy_for, refusal
from app.kit.sealing import SecretBox, UnreadableSecret
from app.kit.settings import Settings
from app.services.webhooks import queue
from app.services.webhooks.queue import (
    ABANDONED,
    INTERNAL_ERROR,
    DeliveryClaim,
    DeliveryMessage,
    DeliveryOutcome,
)
from app.services.webhooks.signing import sign

logger = logging.getLogger(__name__)

# A claim outlives the POST's timeout by this much before another process may take it over.
LEASE_MARGIN_SECONDS = 30.0
MAX_ENQUEUE_BATCHES = 10  # per pass; a backlog beyond that waits for the next one
RESPONSE_BYTES_READ = 64 * 1024  # of a receiver's answer, which is otherwise ignored
USER_AGENT = f"prompt-manager-webhooks/{__version__}"
UNREACHABLE = "unreachable: no HTTP answer"


class WebhookPump:
    def __init__(
        self,
        sessions: SessionFactory,
        box: SecretBox,
        *,
        poll_seconds: float,
        timeout_seconds: float,
        max_attempts: int,
        retry_base_seconds: float,
        concurrency: int,
        policy: OutboundPolicy,
    ) -> None:
        self._sessions = sessions
        self._box = box
        self._poll = poll_seconds
        self._timeout = timeout_seconds
        self._max_attempts = max_attempts
        self._retry_base = retry_base_seconds
        self._concurrency = concurrency
        self._policy = policy
        self._http: OutboundClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._sending: dict[asyncio.Task[None], DeliveryClaim] = {}

    async def start(self) -> None:
        self._http = OutboundClient(
            self._policy, limit=self._concurrency, headers={"User-Agent": USER_AGENT}
        )
        await self._http.open()
        self._task = asyncio.create_task(self._loop(), name="webhook-pump")

    async def stop(self) -> None:
        """Stop at once: POSTs in flight are abandoned and their deliveries handed back, due
        now, for whichever process pumps next (the receiver may get that one twice; the
        `Webhook-Id` lets it tell)."""
        tasks = [t for t in (self._task, *self._sending) if t is not None]
        claims = list(self._sending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        try:
            await queue.release(self._sessions, claims, now=utcnow())
        except Exception:
            logger.warning("could not hand back %d webhook deliveries", len(claims), exc_info=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def pump_once(self) -> int:
        """One pass: announce what finished, start sending what is due. Returns how many
        deliveries it started sending."""
        now = utcnow()
        for _ in range(MAX_ENQUEUE_BATCHES):
            if not await queue.enqueue_finished(self._sessions, now=now):
                break
        room = self._concurrency - len(self._sending)
        if room <= 0:
            return 0
        claims = await queue.claim_due(
            self._sessions,
            limit=room,
            lease_seconds=self._timeout + LEASE_MARGIN_SECONDS,
            max_attempts=self._max_attempts,
            now=now,
        )
        for claim in claims:
            task = asyncio.create_task(self._deliver(claim), name=f"webhook-{claim.id}")
            self._sending[task] = claim
            task.add_done_callback(self._sending.pop)
        return len(claims)

    async def _loop(self) -> None:
        while True:
            try:
                await self.pump_once()
            except Exception as exc:
                if lost_connection(exc):
                    logger.warning("webhook pump: the database is unreachable; will retry")
                else:
                    logger.warning("webhook pump pass failed; will retry", exc_info=True)
            await asyncio.sleep(self._poll)

    async def _deliver(self, claim: DeliveryClaim) -> None:
        try:
            outcome = await self._attempt(claim)
            if outcome is None:
                return  # the endpoint or the prompt was deleted meanwhile, the delivery too
            await queue.record_outcome(
                self._sessions,
                claim,
                outcome,
                max_attempts=self._max_attempts,
                retry_base_seconds=self._retry_base,
            )
            if not outcome.delivered:
                # The error's kind only: its text may name the URL, which may carry a token.
                reason = (outcome.error or "").partition(":")[0] or f"HTTP {outcome.status_code}"
                logger.info(
                    "webhook delivery %s attempt %d failed: %s", claim.id, claim.fence, reason
                )
        except Exception as exc:
            # Only the database gets here. The claim stays `sending` until its lease expires;
            # then a pass records the attempt as abandoned (it counts against the limit).
            if lost_connection(exc):
                logger.warning("webhook delivery %s: the database is unreachable", claim.id)
            else:
                self._log_failure(claim, "its outcome could not be recorded")

    async def _attempt(self, claim: DeliveryClaim) -> DeliveryOutcome | None:
        """Build and send the delivery. Every failure is an outcome (None: nothing to send);
        only losing the database raises, since the outcome could not be recorded either."""
        attempted_at = utcnow()
        try:
            message = await queue.load_message(self._sessions, self._box, claim)
        except UnreadableSecret as exc:  # not sent unsigned: failed, and retried later
            return DeliveryOutcome(attempted_at, 0, None, f"secret_unreadable: {exc}")
        except Exception as exc:
            if lost_connection(exc):
                raise
            self._log_failure(claim, "its message could not be built")
            return DeliveryOutcome(attempted_at, 0, None, INTERNAL_ERROR)
        if message is None:
            return None
        try:
            return await self._post(claim, message)
        except Exception:  # not the network's doing: `_post` turns that into an outcome
            self._log_failure(claim, "it could not be sent")
            return DeliveryOutcome(attempted_at, 0, None, INTERNAL_ERROR)

    def _log_failure(self, claim: DeliveryClaim, what: str) -> None:
        """A traceback the first time a delivery fails this way, one line on each attempt
        after (the previous attempt's error says whether it failed so before)."""
        again = (claim.last_error or "").startswith((INTERNAL_ERROR, ABANDONED))
        if again:
            logger.warning(
                "webhook delivery %s attempt %d: %s (as before; traceback logged then)",
                claim.id,
                claim.fence,
                what,
            )
        else:
            logger.error(
                "webhook delivery %s attempt %d: %s", claim.id, claim.fence, what, exc_info=True
            )

    async def _post(self, claim: DeliveryClaim, message: DeliveryMessage) -> DeliveryOutcome:
        assert self._http is not None
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Webhook-Id": str(claim.id),
            "Webhook-Timestamp": str(timestamp),
            "Webhook-Signature": sign(message.secret, timestamp, message.body),
        }
        attempted_at = utcnow()
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._http.request(
                    "POST", message.url, data=message.body, headers=headers
                ) as response,
            ):
                status = response.status  # a redirect too: an answer, and not a 2xx
                await response.content.read(RESPONSE_BYTES_READ)
        except TimeoutError:
            if status is None:  # else the answer came, and only its body was slow
                error = f"timeout: no answer within {self._timeout:g} s"
        except OutboundRefused as exc:  # the URL itself, before any connection
            error = f"blocked: {exc}"[:500]
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            if status is None:
                # The same words for a refused connection, a dropped one, a name that does
                # not resolve: anything more would tell an open port from a closed one.
                refused = refusal(exc)
                error = UNREACHABLE if refused is None else f"blocked: {refused}"[:500]
        duration = timedelta(seconds=time.perf_counter() - started)
        return DeliveryOutcome(attempted_at, duration // timedelta(milliseconds=1), status, error)


def create_pump(settings: Settings, sessions: SessionFactory, box: SecretBox) -> WebhookPump:
    return WebhookPump(
        sessions,
        box,
        poll_seconds=settings.webhook_poll_seconds,
        timeout_seconds=settings.webhook_timeout_seconds,
        max_attempts=settings.webhook_max_attempts,
        retry_base_seconds=settings.webhook_retry_base_seconds,
        concurrency=settings.webhook_concurrency,
        policy=policy_for(settings.outbound_allowlist),
    )
