"""Admitting a request against its caller's rate limits and budgets (the intake's last step:
app/services/intake.py), and what the client is told: a 429 with `Retry-After`, and the
`RateLimit-Policy` / `RateLimit` headers (IETF httpapi draft) on the answers of a limited
caller's requests for work: what its admission says (`Grant.headers`, the 429's own), or its
policies alone before it is admitted. `answering` keeps them for the request being served, so
that the HTTP layer answers its errors with them wherever they are raised (app/api/ratelimit.py).

What a request is charged, before it runs:
- requests per minute: one;
- tokens per minute: its prompt's estimated tokens (a quarter of its characters, as
  tokenizers give for English) plus the most it may produce (its `max_tokens`, else the
  model's ceiling from the catalogue, else DEFAULT_OUTPUT_TOKENS), times `n`, as OpenAI's own
  limiter counts a request when it arrives;
- in flight: one, until it has ended;
- budget: the most it can cost, reserved until it has ended, then settled to its real cost:
  its prompt (with its instruction, tools and schema) counted at one token per character (a
  bound: no tokenizer of these providers makes fewer characters than tokens), IMAGE_TOKENS
  per image, plus its most output, at the catalogue price of the dearest model it may run on
  (the model or a fallback). A model without a catalogue price (an OpenAI-compatible
  server's own) costs nothing, as it is recorded.

A caller without limits (most, and every plain request of the benchmarks) costs nothing
here: `Caller.accounts` is empty and the ledger is not asked.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_FLOOR, Decimal

from app.db.base import utcnow
from app.engine.ledger import (
    Account,
    Admission,
    Ledger,
    Refusal,
    Standing,
    period_end,
    period_start,
    seconds_until,
)
from app.kit import money
from app.kit.errors import AppError
from app.providers.registry import Route

DEFAULT_OUTPUT_TOKENS = 4096
IMAGE_TOKENS = 2000
_WHO = {"key": "API key", "user": "user", "team": "team"}
_NAMES = {"rpm": "requests per minute", "tpm": "tokens per minute"}
# The RateLimit headers of the answers to the request being served (`answering`).
_ANSWER: ContextVar[Answer | None] = ContextVar("rate_limit_answer", default=None)


class RateLimited(AppError):
    """429: a limit has no room for the request now; `Retry-After` says when it may."""

    status_code = 429
    code = "rate_limited"
    title = "Too many requests"


class RequestOverLimit(AppError):
    """422 (400 under /v1): the request alone counts more than a limit allows in a whole
    window (its tokens per minute) or period (its budget): waiting would never let it
    through, so it is not a 429 a client would retry."""

    status_code = 422
    code = "request_exceeds_limit"
    title = "Request larger than a limit"


@dataclass(frozen=True, slots=True)
class Grant:
    """An admitted request: the headers its answer carries, and whether it holds
    reservations (settled when its prompt ends; released if it is never recorded)."""

    headers: dict[str, str]
    held: bool


def estimate(
    *,
    candidates: Iterable[Route],
    characters: int,
    messages: int,
    images: int,
    max_tokens: int | None,
    n: int = 1,
) -> tuple[int, Decimal]:
    """(tokens counted per minute, most possible cost) of a request, as the module says."""
    tokens = 0
    cost = Decimal(0)
    bound = characters + 4 * messages + IMAGE_TOKENS * images
    for route in candidates:
        ceiling = route.entry.max_output_tokens if route.entry is not None else None
        output = (max_tokens or ceiling or DEFAULT_OUTPUT_TOKENS) * n
        tokens = max(tokens, math.ceil(characters / 4) + IMAGE_TOKENS * images + output)
        if route.price is not None:
            cost = max(cost, route.price.cost(bound, output))
    return tokens, cost


class Governor:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._releasing: set[asyncio.Task[None]] = set()

    async def admit(
        self, prompt_id: uuid.UUID, accounts: tuple[Account, ...], *, tokens: int, cost: Decimal
    ) -> Grant:
        """Charge the request to its accounts, or raise the 429 that refuses it (or the 422,
        for a request no window or period of its limits could ever hold)."""
        for account in accounts:
            if (account.tpm is not None and tokens > account.tpm) or (
                account.budget_usd is not None and cost > account.budget_usd
            ):
                raise over_limit(account, tokens=tokens, cost=cost)
        verdict = await self.ledger.admit(Admission(prompt_id, accounts, tokens, cost))
        headers = rate_headers(verdict.standings)
        if (answer := _ANSWER.get()) is not None:
            answer.update(headers)  # (for whatever error this request is answered with now)
        if verdict.refusal is not None:
            raise refused(verdict.refusal, headers, tokens=tokens, cost=cost)
        return Grant(headers, verdict.held)

    def abandon(self, prompt_id: uuid.UUID) -> None:
        """Release, in the background, what an admitted request holds whose prompt was not
        recorded after all (its insert failed, or its client went away meanwhile)."""
        task = asyncio.get_running_loop().create_task(self.ledger.release(prompt_id))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def aclose(self) -> None:
        await asyncio.gather(*self._releasing, return_exceptions=True)


class Answer(dict[str, str]):
    """The RateLimit headers of the answers to a request for work by a caller with limits:
    empty until it is admitted, then what its admission said, granted or refused
    (`Governor.admit` fills it in place). `headers()` is what an error answer carries: those,
    or before the admission the caller's policies alone (made only then: most requests end
    without an error)."""

    def __init__(self, accounts: tuple[Account, ...]) -> None:
        super().__init__()
        self.accounts = accounts

    def headers(self) -> dict[str, str]:
        return dict(self) if self else policy_headers(self.accounts)


def answering(accounts: tuple[Account, ...]) -> Answer:
    """Start the `Answer` of the request now being served (in this task's context), once the
    HTTP layer knows it comes from a caller with limits; its error answers carry
    `Answer.headers()`, its successful answer and its 429 their own (`Grant.headers`,
    `RateLimited.headers`)."""
    answer = Answer(accounts)
    _ANSWER.set(answer)
    return answer


def _cents(amount: Decimal) -> int:
    return int((amount * 100).to_integral_value(rounding=ROUND_FLOOR))


def _who(account: Account) -> str:
    who = f"{_WHO[account.scope]} {str(account.subject_id)[:8]}…"
    return f"{who} (the server's default limit)" if account.default else who


def over_limit(account: Account, *, tokens: int, cost: Decimal) -> AppError:
    if account.tpm is not None and tokens > account.tpm:
        detail = (
            f"This request counts {tokens:,} tokens (its prompt's estimate and the most it may "
            f"produce: its max_tokens, else the model's ceiling), more than the {account.tpm:,} "
            f"tokens per minute the {_who(account)} allows at all. Lower max_tokens or shorten "
            "the prompt."
        )
        extra: dict[str, object] = {"limit_name": "tpm", "limit": account.tpm, "tokens": tokens}
    else:
        assert account.budget_usd is not None
        detail = (
            f"This request may cost up to ${money.plain(cost)} (its prompt and its max_tokens, "
            f"else the model's ceiling, at the dearest model it may run on), more than the "
            f"whole budget of ${money.plain(account.budget_usd)} per {account.budget_period} "
            f"of the {_who(account)}. Lower max_tokens or shorten the prompt."
        )
        extra = {
            "limit_name": "budget",
            "budget_usd": money.plain(account.budget_usd),
            "cost_usd": money.plain(cost),
        }
    return RequestOverLimit(detail, extra={"scope": account.scope, **extra})


def refused(refusal: Refusal, headers: dict[str, str], *, tokens: int, cost: Decimal) -> AppError:
    account, standing = refusal.account, refusal.standing
    headers = {**headers, "Retry-After": str(refusal.retry_after)}
    extra: dict[str, object] = {"scope": account.scope, "retry_after": refusal.retry_after}
    if refusal.kind in ("rpm", "tpm"):
        limit = account.rpm if refusal.kind == "rpm" else account.tpm
        used = standing.requests if refusal.kind == "rpm" else standing.tokens
        asked = "" if refusal.kind == "rpm" else f" (this request counts {tokens:,})"
        detail = (
            f"The {_who(account)} allows {limit:,} {_NAMES[refusal.kind]}; {used:,} are used "
            f"in this minute{asked}. Try again in {refusal.retry_after} s."
        )
        extra |= {"limit": limit, "window_seconds": 60, "limit_name": refusal.kind}
        return RateLimited(detail, code="rate_limited", extra=extra, headers=headers)
    if refusal.kind == "in_flight":
        detail = (
            f"The {_who(account)} allows {account.max_in_flight:,} prompts in flight at once, "
            "and has that many; send more once some have ended."
        )
        extra |= {"limit": account.max_in_flight, "limit_name": "max_in_flight"}
        return RateLimited(detail, code="too_many_in_flight", extra=extra, headers=headers)
    assert account.budget_usd is not None
    budget, spent = money.plain(account.budget_usd), money.plain(standing.spent_usd)
    reserved = money.plain(standing.reserved_usd)
    detail = (
        f"The {_who(account)} has a budget of ${budget} per {account.budget_period} (from "
        f"{standing.period_start.isoformat()}): ${spent} spent and ${reserved} reserved by "
        f"prompts running now; this request may cost up to ${money.plain(cost)}. It renews in "
        f"{refusal.retry_after:,} s."
    )
    extra |= {
        "limit_name": "budget",
        "budget_usd": budget,
        "spent_usd": spent,
        "reserved_usd": reserved,
        "period": account.budget_period,
        "period_start": standing.period_start.isoformat(),
    }
    return RateLimited(detail, code="budget_exceeded", extra=extra, headers=headers)


def rate_headers(standings: Iterable[Standing]) -> dict[str, str]:
    """`RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) of an
    admission, granted or refused: each account's policies (`_policies`), and what is left of
    each (`r`) with the seconds until it resets (`t`)."""
    policies: list[str] = []
    states: list[str] = []
    for standing in standings:
        account = standing.account
        for limit, quota, policy in _policies(account, standing.period_start):
            policies.append(policy)
            states.append(f'"{account.scope}-{limit}";{_room(standing, limit, quota)}')
    if not policies:
        return {}
    return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(states)}


def policy_headers(accounts: Iterable[Account]) -> dict[str, str]:
    """`RateLimit-Policy` alone, from the accounts' limits (nothing is read): what an answer
    to a request not admitted carries (one refused as invalid before its admission, say)."""
    now = utcnow()
    policies = [
        policy
        for account in accounts
        for _, _, policy in _policies(account, period_start(now, account.budget_period))
    ]
    return {"RateLimit-Policy": ", ".join(policies)} if policies else {}


def _policies(account: Account, start: date) -> Iterator[tuple[str, int, str]]:
    """Each limit set on `account` (`rpm`, `tpm`, `in-flight`, `budget`), with its quota (a
    budget's in cents) and its `RateLimit-Policy` item: named `<scope>-<limit>`, with the
    quota (`q`), the window (`w`, seconds; a budget's is its period that starts on `start`)
    and the unit (`qu`: requests unless it says `tokens`, `concurrent-requests` or
    `usd-cents`)."""
    scope = account.scope
    if (rpm := account.rpm) is not None:
        yield "rpm", rpm, f'"{scope}-rpm";q={rpm};w=60'
    if (tpm := account.tpm) is not None:
        yield "tpm", tpm, f'"{scope}-tpm";q={tpm};w=60;qu="tokens"'
    if (most := account.max_in_flight) is not None:
        yield "in-flight", most, f'"{scope}-in-flight";q={most};qu="concurrent-requests"'
    if account.budget_usd is not None:
        cents = _cents(account.budget_usd)
        window = (period_end(start, account.budget_period) - start).days * 86_400
        yield "budget", cents, f'"{scope}-budget";q={cents};w={window};qu="usd-cents"'


def _room(standing: Standing, limit: str, quota: int) -> str:
    """What is left of the limit (`r`), and the seconds until it resets (`t`; a place in
    flight is given back when a prompt ends, not at a time)."""
    if limit == "in-flight":
        return f"r={max(0, quota - standing.in_flight)}"
    if limit == "budget":
        account = standing.account
        assert account.budget_usd is not None
        left = account.budget_usd - standing.spent_usd - standing.reserved_usd
        end = period_end(standing.period_start, account.budget_period)
        return f"r={max(0, _cents(left))};t={seconds_until(end)}"
    used = standing.requests if limit == "rpm" else standing.tokens
    return f"r={max(0, quota - used)};t={max(1, math.ceil(standing.window_reset))}"
