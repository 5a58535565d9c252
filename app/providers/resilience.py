"""The gateway's one retry loop and its circuit breaker.

The vendors' SDKs retry by themselves; ours are set not to, so that every upstream call passes
through here and is counted, recorded and billed once. Delays use exponential backoff with
full jitter (a random wait between 0 and min(max_delay, base·2ⁿ)), except that a vendor's
Retry-After is honoured as given, up to a cap; beyond the cap the gateway does not wait at all,
so the prompt moves to its fallback (or fails) instead of sitting idle for minutes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.providers.base import ProviderError, Unavailable


class CircuitOpen(Unavailable):
    """Not a call: the provider failed repeatedly and is being left alone for a while."""

    code = "circuit_open"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int
    base_delay: float
    max_delay: float
    retry_after_cap: float

    def delay(self, retry: int, error: ProviderError) -> float | None:
        """Seconds to wait before retry number `retry` (1-based), or None: stop retrying."""
        if not error.retryable or retry > self.max_retries:
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.retry_after_cap else None
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (retry - 1)))  # noqa: S311


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    probe_started_at: float | None = None


@dataclass
class CircuitBreaker:
    """Per provider: `threshold` consecutive retryable failures open the circuit; after
    `cooldown` seconds one probe call is let through, and its outcome closes or reopens it.

    State is per process: each API or worker process learns on its own, which keeps a faulty
    provider from being hammered without any shared store on the hot path.
    """

    threshold: int
    cooldown: float
    clock: Callable[[], float] = time.monotonic
    _circuits: dict[str, _Circuit] = field(default_factory=dict)

    def allow(self, provider: str) -> bool:
        circuit = self._circuits.get(provider)
        if circuit is None or circuit.opened_at is None:
            return True
        now = self.clock()
        if now - circuit.opened_at < self.cooldown:
            return False
        # Half-open: one probe at a time; a probe that never reported (its caller was
        # cancelled) stops blocking the next one after another cooldown.
        if circuit.probe_started_at is not None and now - circuit.probe_started_at < self.cooldown:
            return False
        circuit.probe_started_at = now
        return True

    def retry_in(self, provider: str) -> float:
        circuit = self._circuits.get(provider)
        if circuit is None or circuit.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - circuit.opened_at))

    def record_success(self, provider: str) -> None:
        self._circuits.pop(provider, None)

    def record_failure(self, provider: str, error: ProviderError) -> None:
        if not error.retryable:
            # The provider answered (a bad request, a refused key): it is up.
            self.record_success(provider)
            return
        circuit = self._circuits.setdefault(provider, _Circuit())
        circuit.failures += 1
        if circuit.probe_started_at is not None or circuit.failures >= self.threshold:
            circuit.opened_at = self.clock()
            circuit.probe_started_at = None
