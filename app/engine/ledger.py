"""The limits ledger: admits a prompt against the rate limits and budgets of its accounts, and
settles it once it has ended. It lives in the database, so it is exact across any number of
API processes and workers.

An *account* is a key, a user or a team that has limits (`limits`); its row in `limit_usage`
holds what it uses now: the current minute's requests and tokens, the prompts it has in
flight, and the current budget period's money reserved and spent.

**Admit** (before anything is recorded or sent upstream): in one transaction, the accounts'
usage rows are locked (an upsert that returns them, in a fixed order, so two processes never
wait on each other in a cycle), each admission of the batch is checked against every one of
its accounts and, if all have room, charged to them all — one more request and its tokens
in the minute, one more in flight, and its most possible cost reserved — then the rows are
written back and a `reservations` row says what the prompt holds. A refused admission
changes nothing. Admissions go through group commit (app/kit/group_commit.py): under load,
one transaction admits a whole batch; on PostgreSQL, a batch that fits is one statement
(`pg_ledger.py`). What this costs a request is measured by `bench/gateways.py --limits`
(docs/architecture.md, "Rate limits and budgets: the ledger", has the figures and what would
take the checks off the critical path).

**Settle** (once the prompt has ended, however it ended): its reservations are deleted, and
each account gets back its place in flight and its reserved money, and is charged what the
prompt's provider calls really cost (the sum of its attempt rows). A prompt admitted in one
budget period and settled in the next is charged to the period it was admitted in (which
has ended): the new period starts from what is admitted in it. `release` is the same, for a
prompt that was never recorded (nothing was spent).

Settling is also where a budget's warning is given: the first time in a period that its
spending passes `warn_at` of it, a `budget.threshold` webhook delivery is queued (`_warn`).

Whatever ends a prompt settles it; should that step be lost (a process killed between the
two), the sweeper settles prompts that have ended but still hold reservations, and releases
reservations whose prompt was never recorded (`sweep`).

Numbers are read and written whole under the rows' locks, never as `x = x + n` in SQL: SQLite
has no exact decimal type (Money is stored as text there), and its arithmetic would go
through floats.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    delete,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.base import utcnow
from app.db.dedicated import DedicatedConnection
from app.db.models import (
    DEFAULT_SUBJECT,
    ApiKey,
    DeliveryStatus,
    Limit,
    LimitScope,
    LimitUsage,
    PromptAttempt,
    PromptRequest,
    PromptStatus,
    Reservation,
    TeamMember,
    TeamRole,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from app.engine import pg_ledger
from app.kit import money
from app.kit.group_commit import GroupCommit

_USAGE: Table = LimitUsage.__table__  # type: ignore[assignment]
_RESERVATIONS: Table = Reservation.__table__  # type: ignore[assignment]
_ZERO = Decimal(0)
FINAL = (PromptStatus.COMPLETED, PromptStatus.FAILED, PromptStatus.CANCELLED)
# A reservation whose prompt was never recorded (its process died between the two) is
# released by the sweeper once it is this old.
ORPHAN_AFTER = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Account:
    """A key, user or team with limits, and those limits (None: no such limit)."""

    scope: str  # key, user or team (a user under the server's default is a `user`)
    subject_id: uuid.UUID
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None
    budget_usd: Decimal | None = None
    budget_period: str = "month"
    # (the limit came from the server's default)
    default: bool = False

    @property
    def key(self) -> tuple[str, uuid.UUID]:
        return (self.scope, self.subject_id)

    @property
    def holds(self) -> bool:
        """Whether an admitted prompt holds something of it until settled."""
        return self.max_in_flight is not None or self.budget_usd is not None


@dataclass(frozen=True, slots=True)
class Admission:
    prompt_id: uuid.UUID
    accounts: tuple[Account, ...]
    tokens: int  # counted against tokens per minute
    cost_usd: Decimal  # the most the prompt can cost: reserved under a budget


@dataclass(frozen=True, slots=True)
class Standing:
    """An account's room after an admission (or at a refusal), for the RateLimit headers."""

    account: Account
    requests: int  # in the current minute
    tokens: int
    in_flight: int
    window_reset: float  # seconds until the minute ends
    reserved_usd: Decimal
    spent_usd: Decimal
    period_start: date


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: str  # rpm, tpm, in_flight, budget
    account: Account
    retry_after: int  # seconds
    standing: Standing


@dataclass(frozen=True, slots=True)
class Verdict:
    prompt_id: uuid.UUID
    standings: tuple[Standing, ...]
    refusal: Refusal | None = None
    held: bool = False  # reservations were written: settle (or release) it


_L = TypeVar("_L")


def user_limits(rows: Mapping[tuple[str, uuid.UUID], _L], user_id: uuid.UUID) -> _L | None:
    """The limits row that applies to a user, of `rows` (by scope and subject): their own,
    even one that limits nothing (it exempts them from the default), else the server's
    default. (pg_ledger.SETTLE says the same in SQL.)"""
    own = rows.get((LimitScope.USER, user_id))
    return own if own is not None else rows.get((LimitScope.DEFAULT, DEFAULT_SUBJECT))


def period_start(now: datetime, period: str) -> date:
    day = now.date()
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_end(start: date, period: str) -> date:
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def seconds_until(day: date, now: datetime | None = None) -> int:
    """Whole seconds from `now` to the start (00:00 UTC) of `day`, at least 1."""
    now = now or utcnow()
    end = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return max(1, math.ceil((end - now).total_seconds()))


@dataclass(slots=True)
class _Row:
    """An account's usage row, read under its lock, rolled over to the current minute."""

    window_start: datetime
    window_requests: int
    window_tokens: int
    in_flight: int
    period_start: date | None
    reserved_usd: Decimal
    spent_usd: Decimal
    warned_period: date | None
    changed: bool = False
    periods: dict[str, date] = field(default_factory=dict)


_LOCK_COLUMNS = (
    _USAGE.c.scope,
    _USAGE.c.subject_id,
    _USAGE.c.window_start,
    _USAGE.c.window_requests,
    _USAGE.c.window_tokens,
    _USAGE.c.in_flight,
    _USAGE.c.period_start,
    _USAGE.c.reserved_usd,
    _USAGE.c.spent_usd,
    _USAGE.c.warned_period,
)
_INSERT_RESERVATIONS = insert(_RESERVATIONS)
_WRITE_BACK = (
    update(_USAGE)
    .where(_USAGE.c.scope == bindparam("b_scope"), _USAGE.c.subject_id == bindparam("b_subject"))
    .values(
        window_start=bindparam("b_window_start"),
        window_requests=bindparam("b_window_requests"),
        window_tokens=bindparam("b_window_tokens"),
        in_flight=bindparam("b_in_flight"),
        period_start=bindparam("b_period_start"),
        reserved_usd=bindparam("b_reserved"),
        spent_usd=bindparam("b_spent"),
        warned_period=bindparam("b_warned"),
    )
)


class Ledger:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        dialect = engine.dialect.name
        insert_for = postgresql.insert if dialect == "postgresql" else sqlite.insert
        upsert = insert_for(_USAGE).values(
            scope=bindparam("b_scope"),
            subject_id=bindparam("b_subject"),
            window_requests=0,
            window_tokens=0,
            in_flight=0,
            reserved_usd=_ZERO,
            spent_usd=_ZERO,
        )
        self._lock_one = upsert.on_conflict_do_update(
            index_elements=[_USAGE.c.scope, _USAGE.c.subject_id],
            set_={"scope": upsert.excluded.scope},
        ).returning(*_LOCK_COLUMNS)
        # PostgreSQL: the statements of pg_ledger.py, on connections of the ledger's own.
        self._admit_writer: DedicatedConnection | None = None
        self._settle_writer: DedicatedConnection | None = None
        if dialect == "postgresql":
            self._admit_writer = DedicatedConnection(engine)
            self._settle_writer = DedicatedConnection(engine)
        self._admissions: GroupCommit[Admission, Verdict] = GroupCommit(
            self._admit_many, orphaned=self._release_orphan
        )
        self._settlements: GroupCommit[uuid.UUID, None] = GroupCommit(self._settle_many)

    async def aclose(self) -> None:
        await self._admissions.aclose()
        await self._settlements.aclose()
        for writer in (self._admit_writer, self._settle_writer):
            if writer is not None:
                await writer.aclose()

    async def admit(self, admission: Admission) -> Verdict:
        """Admit the prompt against all its accounts, or refuse it (`Verdict.refusal`), in which
        case nothing was charged."""
        return await self._admissions.submit(admission)

    async def settle(self, prompt_ids: Iterable[uuid.UUID]) -> None:
        """Give back what these ended prompts hold, and charge their real cost."""
        await asyncio.gather(*(self._settlements.submit(i) for i in prompt_ids))

    async def release(self, prompt_id: uuid.UUID) -> None:
        """Undo an admission whose prompt was never recorded (nothing was spent)."""
        await self._settlements.submit(prompt_id)

    async def _release_orphan(self, verdict: Verdict) -> None:
        if verdict.held:
            await self.release(verdict.prompt_id)

    # -- admit ---------------------------------------------------------------------------

    async def _lock(
        self, connection: AsyncConnection, keys: list[tuple[str, uuid.UUID]]
    ) -> dict[tuple[str, uuid.UUID], _Row]:
        """The usage rows of these accounts, created if missing, locked until the transaction
        ends: an upsert each, in key order (every locker takes them in that order). One
        statement, compiled once, per row: a multi-row VALUES would be compiled anew for
        each batch, which cost more than the statements."""
        rows: dict[tuple[str, uuid.UUID], _Row] = {}
        for scope, subject in keys:
            result = await connection.execute(
                self._lock_one, {"b_scope": scope, "b_subject": subject}
            )
            _, _, *rest = result.one()
            rows[(scope, subject)] = _Row(*rest)
        return rows

    async def _admit_many(self, batch: Sequence[Admission]) -> list[Verdict]:
        now = utcnow()
        keys = sorted({a.key for admission in batch for a in admission.accounts})
        if self._admit_writer is not None:
            if (admitted := await self._admit_all(batch, now)) is not None:
                return admitted
            async with self._admit_writer.transaction() as fetch:
                rows = {
                    (scope, subject): _Row(*rest)
                    for scope, subject, *rest in await pg_ledger.lock(fetch, keys)
                }
                verdicts, changed, held = self._decide(batch, rows, now)
                if changed or held:
                    await pg_ledger.write(fetch, changed, held)
            return verdicts
        async with self._engine.begin() as connection:
            rows = await self._lock(connection, keys)
            verdicts, changed, held = self._decide(batch, rows, now)
            if changed:
                await connection.execute(_WRITE_BACK, changed)
            if held:
                await connection.execute(_INSERT_RESERVATIONS, held)
        return verdicts

    async def _admit_all(self, batch: Sequence[Admission], now: datetime) -> list[Verdict] | None:
        """PostgreSQL, in one statement (`pg_ledger.ADMIT_ALL`): the batch if every admission
        fits, as `_decide` would have admitted them all; None (and nothing written) if one
        would be refused, an account has no usage row yet, or the batch has one account with
        two sets of limits (keys cached at different times): then the exact way decides."""
        accounts: dict[tuple[str, uuid.UUID], Account] = {}
        for admission in batch:
            for account in admission.accounts:
                if accounts.setdefault(account.key, account) != account:
                    return None
        assert self._admit_writer is not None
        minute = now.replace(second=0, microsecond=0)
        window_reset = 60 - (now - minute).total_seconds()
        periods = {key: period_start(now, a.budget_period) for key, a in accounts.items()}
        limits = [
            (a.scope, a.subject_id, a.rpm, a.tpm, a.max_in_flight, a.budget_usd, period)
            for key, a in accounts.items()
            for period in [periods[key] if a.budget_usd is not None else None]
        ]
        charges: list[tuple[object, ...]] = []
        held: list[dict[str, object]] = []
        for number, admission in enumerate(batch):
            for a in admission.accounts:
                cost = admission.cost_usd if a.budget_usd is not None else _ZERO
                charges.append(
                    (number, a.scope, a.subject_id, admission.tokens, cost, int(a.holds))
                )
                if a.holds:
                    held.append(_reservation(admission, a, periods[a.key], now))
        rows = await pg_ledger.admit_all(self._admit_writer.fetch, minute, limits, charges, held)
        if not rows or not rows[0]["ok"]:
            return None
        after = {(row[0], row[1], row[2]): row for row in rows}
        verdicts = []
        for number, admission in enumerate(batch):
            standings = []
            for a in admission.accounts:
                row = after[(number, a.scope, a.subject_id)]
                standings.append(
                    Standing(
                        a,
                        requests=row["requests"],
                        tokens=row["tokens"],
                        in_flight=row["in_flight"],
                        window_reset=window_reset,
                        reserved_usd=row["reserved"],
                        spent_usd=row["spent"],
                        period_start=periods[a.key],
                    )
                )
            held_any = any(a.holds for a in admission.accounts)
            verdicts.append(Verdict(admission.prompt_id, tuple(standings), held=held_any))
        return verdicts

    def _decide(
        self,
        batch: Sequence[Admission],
        rows: dict[tuple[str, uuid.UUID], _Row],
        now: datetime,
    ) -> tuple[list[Verdict], list[dict[str, object]], list[dict[str, object]]]:
        """Each admission of the batch, in order, against the locked rows (which it charges):
        the verdicts, the rows to write back (as `_written`) and the reservations to insert."""
        minute = now.replace(second=0, microsecond=0)
        window_reset = 60 - (now - minute).total_seconds()
        for row in rows.values():
            if row.window_start != minute:
                row.window_start, row.window_requests, row.window_tokens = minute, 0, 0
                row.changed = True
        verdicts: list[Verdict] = []
        held: list[dict[str, object]] = []
        for admission in batch:
            verdict = self._admit_one(admission, rows, now, window_reset)
            verdicts.append(verdict)
            if verdict.held:
                held.extend(
                    _reservation(admission, a, rows[a.key].periods.get(a.budget_period), now)
                    for a in admission.accounts
                    if a.holds
                )
        changed = [_written(key, row) for key, row in rows.items() if row.changed]
        return verdicts, changed, held

    def _admit_one(
        self,
        admission: Admission,
        rows: dict[tuple[str, uuid.UUID], _Row],
        now: datetime,
        window_reset: float,
    ) -> Verdict:
        refusal: Refusal | None = None
        for account in admission.accounts:
            row = rows[account.key]
            start = self._period(row, account, now)
            kind: str | None = None
            if account.rpm is not None and row.window_requests + 1 > account.rpm:
                kind, retry = "rpm", math.ceil(window_reset)
            elif account.tpm is not None and row.window_tokens + admission.tokens > account.tpm:
                kind, retry = "tpm", math.ceil(window_reset)
            elif account.max_in_flight is not None and row.in_flight + 1 > account.max_in_flight:
                kind, retry = "in_flight", 1
            elif account.budget_usd is not None and (
                row.spent_usd + row.reserved_usd + admission.cost_usd > account.budget_usd
            ):
                end = period_end(start, account.budget_period)
                kind, retry = "budget", seconds_until(end, now)
            if kind is not None:
                refusal = Refusal(
                    kind, account, max(1, retry), _standing(account, row, start, window_reset)
                )
                break
        if refusal is not None:
            standings = tuple(
                _standing(a, rows[a.key], self._period(rows[a.key], a, now), window_reset)
                for a in admission.accounts
            )
            return Verdict(admission.prompt_id, standings, refusal)
        standings_list = []
        for account in admission.accounts:
            row = rows[account.key]
            row.window_requests += 1
            row.window_tokens += admission.tokens
            if account.holds:
                row.in_flight += 1
            if account.budget_usd is not None:
                row.reserved_usd += admission.cost_usd
            row.changed = True
            start = self._period(row, account, now)
            standings_list.append(_standing(account, row, start, window_reset))
        held = any(a.holds for a in admission.accounts)
        return Verdict(admission.prompt_id, tuple(standings_list), held=held)

    @staticmethod
    def _period(row: _Row, account: Account, now: datetime) -> date:
        """The account's current budget period; a row still in an earlier one starts the new
        one with nothing spent (what is reserved is still held: those prompts are running)."""
        start = row.periods.get(account.budget_period)
        if start is None:
            start = row.periods[account.budget_period] = period_start(now, account.budget_period)
        if account.budget_usd is not None and row.period_start != start:
            row.period_start, row.spent_usd, row.changed = start, _ZERO, True
        return start

    # -- settle --------------------------------------------------------------------------

    async def _settle_many(self, prompt_ids: Sequence[uuid.UUID]) -> list[None]:
        ids = list(dict.fromkeys(prompt_ids))
        if self._settle_writer is not None:
            crossed = await pg_ledger.settle(self._settle_writer.fetch, ids)
            if crossed:
                await self._warn_crossed(crossed)
            return [None] * len(prompt_ids)
        async with self._engine.begin() as connection:
            # (a write first: on SQLite it takes the write lock before anything is read)
            taken = (
                await connection.execute(
                    delete(_RESERVATIONS)
                    .where(_RESERVATIONS.c.prompt_id.in_(ids))
                    .returning(
                        _RESERVATIONS.c.prompt_id,
                        _RESERVATIONS.c.scope,
                        _RESERVATIONS.c.subject_id,
                        _RESERVATIONS.c.amount_usd,
                        _RESERVATIONS.c.period_start,
                    )
                )
            ).all()
            if not taken:
                return [None] * len(prompt_ids)
            costs: dict[uuid.UUID, Decimal] = {}
            attempts = PromptAttempt.__table__.c
            for prompt_id, total in await connection.execute(
                select(attempts.prompt_id, attempts.cost_usd).where(
                    attempts.prompt_id.in_({row[0] for row in taken}),
                    attempts.cost_usd.is_not(None),
                )
            ):
                costs[prompt_id] = costs.get(prompt_id, _ZERO) + total
            back: dict[tuple[str, uuid.UUID], list[tuple[Decimal, Decimal, object]]] = defaultdict(
                list
            )
            for prompt_id, scope, subject, amount, period in taken:
                back[(scope, subject)].append((amount, costs.get(prompt_id, _ZERO), period))
            rows = await _locked(connection, back)
            charged: dict[tuple[str, uuid.UUID], _Row] = {}
            for key, row in rows.items():
                for amount, cost, admitted_in in back[key]:
                    row.in_flight = max(0, row.in_flight - 1)
                    row.reserved_usd = max(_ZERO, row.reserved_usd - amount)
                    if admitted_in is not None and admitted_in == row.period_start:
                        row.spent_usd += cost
                        charged[key] = row
            if charged:
                await _warn(connection, charged)
            if rows:
                await connection.execute(_WRITE_BACK, [_written(k, r) for k, r in rows.items()])
        return [None] * len(prompt_ids)

    async def _warn_crossed(self, keys: list[tuple[str, uuid.UUID]]) -> None:
        """Warn the budgets a settlement found past their warning share (PostgreSQL): checked
        again under their rows' locks, so each is warned once per period."""
        async with self._engine.begin() as connection:
            rows = await _locked(connection, keys)
            before = {key: row.warned_period for key, row in rows.items()}
            await _warn(connection, rows)
            warned = [(k, r) for k, r in rows.items() if r.warned_period != before[k]]
            if warned:
                await connection.execute(_WRITE_BACK, [_written(k, r) for k, r in warned])

    # -- sweep ---------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Settle the prompts that have ended but still hold reservations, and release the
        reservations of prompts never recorded (older than ORPHAN_AFTER). Returns how many
        prompts were settled or released."""
        p = PromptRequest
        r = _RESERVATIONS.c
        async with self._engine.connect() as connection:
            ended = select(r.prompt_id).join(p, p.id == r.prompt_id).where(p.status.in_(FINAL))
            orphans = (
                select(r.prompt_id)
                .where(r.created_at < utcnow() - ORPHAN_AFTER)
                .where(~select(p.id).where(p.id == r.prompt_id).exists())
            )
            ids = set(await connection.scalars(ended.limit(1000)))
            ids.update(await connection.scalars(orphans.limit(1000)))
        if ids:
            await self._settle_many(sorted(ids))
        return len(ids)


async def _locked(
    connection: AsyncConnection, keys: Iterable[tuple[str, uuid.UUID]]
) -> dict[tuple[str, uuid.UUID], _Row]:
    """These accounts' usage rows (those that exist), locked until the transaction ends, in
    key order (as every locker takes them)."""
    result = await connection.execute(
        select(*_LOCK_COLUMNS)
        .where(tuple_(_USAGE.c.scope, _USAGE.c.subject_id).in_(sorted(keys)))
        .order_by(_USAGE.c.scope, _USAGE.c.subject_id)
        .with_for_update()
    )
    return {(scope, subject): _Row(*rest) for scope, subject, *rest in result}


async def _warn(connection: AsyncConnection, charged: dict[tuple[str, uuid.UUID], _Row]) -> None:
    """For each budget just charged whose spending has passed its warning share (`warn_at`)
    for the first time this period: mark the period warned (the row is locked: once across
    all processes) and queue a `budget.threshold` webhook delivery to each subscribed
    endpoint of whoever answers for the budget (the user; a key's user; a team's owners),
    in the settling transaction. The webhook pump sends them (app/services/webhooks)."""
    limits = Limit.__table__.c
    wanted = [
        and_(limits.scope == scope, limits.subject_id == subject) for scope, subject in charged
    ]
    wanted.append(limits.scope == LimitScope.DEFAULT)
    found = {
        (row.scope, row.subject_id): row
        for row in await connection.execute(
            select(
                limits.scope,
                limits.subject_id,
                limits.budget_usd,
                limits.budget_period,
                limits.warn_at,
            ).where(or_(*wanted))
        )
    }
    now = utcnow()
    events: list[tuple[str, uuid.UUID, dict[str, object]]] = []
    for (scope, subject), row in charged.items():
        if scope == LimitScope.USER:
            limit = user_limits(found, subject)
        else:
            limit = found.get((scope, subject))
        if limit is None or limit.budget_usd is None or row.period_start is None:
            continue
        if row.warned_period == row.period_start:
            continue
        if row.spent_usd < limit.budget_usd * Decimal(str(limit.warn_at)):
            continue
        row.warned_period = row.period_start
        payload = {
            "scope": scope,
            "subject_id": str(subject),
            "budget_usd": money.plain(limit.budget_usd),
            "spent_usd": money.plain(row.spent_usd),
            "reserved_usd": money.plain(row.reserved_usd),
            "warn_at": limit.warn_at,
            "period": limit.budget_period,
            "period_start": row.period_start.isoformat(),
            "period_end": period_end(row.period_start, limit.budget_period).isoformat(),
        }
        events.append((scope, subject, payload))
    if not events:
        return
    endpoints = WebhookEndpoint.__table__.c
    deliveries: list[dict[str, object]] = []
    for scope, subject, payload in events:
        if scope == LimitScope.USER:
            users = select(literal(subject))
        elif scope == LimitScope.KEY:
            users = select(ApiKey.user_id).where(ApiKey.id == subject)
        else:
            users = select(TeamMember.user_id).where(
                TeamMember.team_id == subject, TeamMember.role == TeamRole.OWNER
            )
        subscribed = await connection.scalars(
            select(endpoints.id).where(
                endpoints.user_id.in_(users.scalar_subquery()),
                endpoints.on_budget_threshold.is_(True),
                endpoints.enabled.is_(True),
            )
        )
        deliveries.extend(
            {
                "id": uuid.uuid4(),
                "endpoint_id": endpoint_id,
                "prompt_id": None,
                "event": WebhookEvent.BUDGET_THRESHOLD.value,
                "payload": payload,
                "status": DeliveryStatus.PENDING.value,
                "attempts": 0,
                "attempts_at_requeue": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for endpoint_id in subscribed
        )
    if deliveries:
        await connection.execute(insert(WebhookDelivery), deliveries)


def _reservation(
    admission: Admission, account: Account, period: date | None, now: datetime
) -> dict[str, object]:
    """The `reservations` row of what an admitted prompt holds of one account: its place in
    flight, and under a budget its most cost, reserved in the budget period `period`."""
    return {
        "prompt_id": admission.prompt_id,
        "scope": account.scope,
        "subject_id": account.subject_id,
        "amount_usd": admission.cost_usd if account.budget_usd is not None else _ZERO,
        "period_start": period,
        "created_at": now,
    }


def _standing(account: Account, row: _Row, start: date, window_reset: float) -> Standing:
    return Standing(
        account,
        requests=row.window_requests,
        tokens=row.window_tokens,
        in_flight=row.in_flight,
        window_reset=window_reset,
        reserved_usd=row.reserved_usd,
        spent_usd=row.spent_usd if row.period_start == start else _ZERO,
        period_start=start,
    )


def _written(key: tuple[str, uuid.UUID], row: _Row) -> dict[str, object]:
    return {
        "b_scope": key[0],
        "b_subject": key[1],
        "b_window_start": row.window_start,
        "b_window_requests": row.window_requests,
        "b_window_tokens": row.window_tokens,
        "b_in_flight": row.in_flight,
        "b_period_start": row.period_start,
        "b_reserved": row.reserved_usd,
        "b_spent": row.spent_usd,
        "b_warned": row.warned_period,
    }
