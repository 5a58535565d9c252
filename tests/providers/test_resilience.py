"""The retry policy and the circuit breaker, on their own (no clock is waited for)."""

from __future__ import annotations

from app.providers.base import BadRequest, ProviderTimeout, RateLimited, Unavailable
from app.providers.resilience import CircuitBreaker, RetryPolicy

POLICY = RetryPolicy(max_retries=3, base_delay=0.5, max_delay=4.0, retry_after_cap=10.0)


def test_full_jitter_stays_within_the_exponential_bound():
    error = Unavailable("down", status=503)
    for retry, bound in [(1, 0.5), (2, 1.0), (3, 2.0)]:
        delays = [POLICY.delay(retry, error) for _ in range(300)]
        assert all(d is not None and 0 <= d <= bound for d in delays)
        assert max(d for d in delays if d is not None) > bound * 0.7  # it is random, not fixed
    capped = RetryPolicy(max_retries=10, base_delay=0.5, max_delay=4.0, retry_after_cap=10.0)
    assert all((capped.delay(9, error) or 0) <= 4.0 for _ in range(100))


def test_retries_stop_after_the_limit_and_never_for_a_bad_request():
    assert POLICY.delay(4, ProviderTimeout("slow")) is None
    assert POLICY.delay(1, BadRequest("no", status=400)) is None


def test_retry_after_is_used_as_given_up_to_the_cap():
    assert POLICY.delay(1, RateLimited("wait", status=429, retry_after=7.0)) == 7.0
    assert POLICY.delay(1, RateLimited("wait", status=429, retry_after=11.0)) is None
    assert POLICY.delay(1, Unavailable("busy", status=503, retry_after=2.0)) == 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_after_cooldown():
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, cooldown=30.0, clock=clock)
    down = Unavailable("down", status=503)
    for _ in range(2):
        assert breaker.allow("openai")
        breaker.record_failure("openai", down)
    assert breaker.allow("openai")
    breaker.record_failure("openai", down)  # the third in a row: open
    assert not breaker.allow("openai")
    assert breaker.allow("anthropic")  # circuits are per provider
    assert breaker.retry_in("openai") == 30.0

    clock.now += 30.0
    assert breaker.allow("openai")  # the probe
    assert not breaker.allow("openai")  # only one at a time
    breaker.record_failure("openai", down)  # the probe failed: open again at once
    assert not breaker.allow("openai")

    clock.now += 30.0
    assert breaker.allow("openai")
    breaker.record_success("openai")  # the probe worked: closed
    assert breaker.allow("openai") and breaker.allow("openai")


def test_a_success_or_a_request_error_resets_the_count():
    breaker = CircuitBreaker(threshold=2, cooldown=30.0, clock=FakeClock())
    down = Unavailable("down", status=503)
    breaker.record_failure("openai", down)
    breaker.record_success("openai")
    breaker.record_failure("openai", down)
    assert breaker.allow("openai")
    breaker.record_failure("openai", BadRequest("bad", status=400))  # the provider answered
    breaker.record_failure("openai", down)
    assert breaker.allow("openai")


def test_a_probe_that_never_reports_does_not_block_forever():
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown=10.0, clock=clock)
    breaker.record_failure("openai", Unavailable("down", status=503))
    clock.now += 10.0
    assert breaker.allow("openai")  # a probe whose caller is then cancelled
    clock.now += 5.0
    assert not breaker.allow("openai")
    clock.now += 5.0
    assert breaker.allow("openai")
