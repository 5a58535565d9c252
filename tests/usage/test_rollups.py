"""The daily usage rollups stay equal to the sums over the prompt log whichever write produced
the figures: the outcome batches (one row and many, on SQLite and in PostgreSQL's one
statement), a cancellation (pending, or stopped by its runner), a runner handing its claims
back, the sweeper's recovery of lost executions; and the migration rolls up what was there
before it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.base import UTCDateTime, utcnow
from app.db.database import create_engine, create_session_factory
from app.db.models import PromptStatus
from app.engine.batch_writes import BatchWrites, OutcomeWrite
from app.engine.recorder import Recorder
from app.engine.records import AttemptRecord, Claim, ResponseRecord
from tests.conftest import make_settings, migrate
from tests.records import openai_prompt, seed
from tests.usage.sums import assert_rollups_match, raw_sums, rollups


def _attempt(outcome: str = "success", *, days_ago: int = 0, **usage: object) -> AttemptRecord:
    ended = utcnow() - timedelta(days=days_ago)
    return AttemptRecord(
        provider="openai",
        model="m",
        started_at=ended - timedelta(seconds=1),
        ended_at=ended,
        outcome=outcome,
        **usage,  # type: ignore[arg-type]
    )


def _answer(duration_ms: int, cost: str = "0.0000123") -> ResponseRecord:
    return ResponseRecord(
        response_text="answer",
        duration_ms=duration_ms,
        provider="openai",
        upstream_model="m",
        input_tokens=10,
        output_tokens=5,
        usage_estimated=False,
        cost_usd=Decimal(cost),
        finish_reason="stop",
        catalogue_version=None,
    )


def _priced(cost: str, **usage: object) -> dict[str, object]:
    return {"input_tokens": 10, "output_tokens": 5, "cost_usd": Decimal(cost), **usage}


async def test_every_writer_keeps_the_rollups_equal_to_the_prompt_log(fresh_database: str):
    await migrate(fresh_database)
    team, key = uuid.uuid4(), uuid.uuid4()
    names = [f"p{n}" for n in range(12)]
    prompts = {
        name: openai_prompt(
            f"usage-{name}",
            model="gpt-4o-mini" if n % 2 else f"openai/usage-{n % 3}",
            team_id=team if n % 3 else None,
            api_key_id=key if n % 4 else None,
        )
        for n, name in enumerate(names)
    }
    prompts["p8"].executions = 1  # (its next execution is its last)
    engine = create_engine(make_settings(fresh_database))
    sessions = create_session_factory(engine)
    await seed(sessions, list(prompts.values()))
    recorder, writes = Recorder(engine), BatchWrites(engine)
    ids = {name: prompt.id for name, prompt in prompts.items()}

    async def claim(name: str, lease: float = 30) -> Claim:
        claimed = await recorder.claim(ids[name], lease_seconds=lease)
        assert claimed is not None
        return claimed

    try:
        # The outcome batches, one outcome at a time: a retried call, then the answer.
        p0 = await claim("p0")
        await recorder.record_attempt(p0, _attempt("error", http_status=503))
        assert await recorder.finish(
            p0,
            attempt=_attempt(**_priced("0.0000123", cached_input_tokens=4)),
            response=_answer(1_234),
        )
        # A failure, with a call that ended yesterday (its own day), and a reasoning one.
        p1 = await claim("p1")
        await recorder.record_attempt(p1, _attempt("error", days_ago=1, **_priced("0.5")))
        assert await recorder.finish(
            p1,
            attempt=_attempt("error", **_priced("0.25", reasoning_tokens=3)),
            error_code="bad_request",
            error_message="no",
        )
        # An answer that failed its check (a response, yet failed: no duration counted).
        p2 = await claim("p2")
        assert await recorder.finish(
            p2, attempt=_attempt(), response=_answer(40), error_code="invalid_structured_output"
        )
        # Pending → cancelled at once.
        assert await recorder.cancel(ids["p3"], user_id=prompts["p3"].user_id) == "pending"
        # Stopped by its runner: the abandoned call, then the cancellation.
        p4 = await claim("p4")
        await recorder.record_attempt(p4, _attempt("cancelled"))
        assert await recorder.finish_cancelled(p4)
        # A runner hands its claims back: one whose cancellation was requested ends cancelled.
        p5, p6 = await claim("p5"), await claim("p6")
        assert await recorder.cancel(ids["p5"], user_id=prompts["p5"].user_id) == "running"
        await recorder.release([p5, p6])
        # The sweeper: lost executions (a lost attempt each), cancelled, failed, requeued.
        for name in ("p7", "p8"):
            await claim(name, lease=0.05)
        p9 = await claim("p9", lease=0.05)
        assert await recorder.cancel(ids["p7"], user_id=prompts["p7"].user_id) == "running"
        await asyncio.sleep(0.1)
        recovered = await recorder.recover_expired(max_attempts=2)
        assert (recovered.cancelled, recovered.failed, recovered.requeued) == (1, 1, [ids["p9"]])
        # The batch form: several outcomes in one write (arrays on PostgreSQL), an attempt
        # alone and then its prompt's answer, a very slow answer, a stale runner's call.
        p10, p11 = await claim("p10"), await claim("p11")
        won = await writes.outcomes(
            [
                OutcomeWrite(p10, _attempt(**_priced("0.001"))),
                OutcomeWrite(p10, _attempt(), PromptStatus.COMPLETED, _answer(2_000_000)),
                OutcomeWrite(p11, _attempt(), PromptStatus.COMPLETED, _answer(7)),
                OutcomeWrite(p9, _attempt("error"), PromptStatus.FAILED),  # (its claim was lost)
            ]
        )
        assert won == [False, True, True, False]
        # Late calls: recorded, with no status change.
        assert not await recorder.finish(p10, attempt=_attempt(), response=_answer(5))
        await asyncio.gather(*(recorder.record_attempt(p6, _attempt("abandoned")) for _ in "ab"))

        async with sessions() as session:
            raw = await raw_sums(session)
            await assert_rollups_match(session)
            stored = await rollups(session)
        figures = [sums.figures() for sums in raw.values()]
        assert sum(f["requests"] for f in figures) == 10  # p6 and p9 are pending again
        assert sum(f["attempts"] for f in figures) == 16
        assert sum(f["cost_usd"] for f in figures) == Decimal("0.7510123")
        assert len({key[0] for key in stored}) == 2  # today and yesterday
        assert sum(f["cancelled"] for f in figures) == 4
    finally:
        await writes.aclose()
        await recorder.aclose()
        await engine.dispose()


async def test_the_migration_rolls_up_the_prompt_log_it_finds(fresh_database: str):
    """0013 on a database with prompts: the rollups start equal to the log."""
    await migrate(fresh_database, "0012")
    now = utcnow()
    user, team = uuid.uuid4(), uuid.uuid4()
    users = sa.table(
        "users",
        sa.column("id", sa.Uuid()),
        sa.column("email", sa.String()),
        sa.column("is_admin", sa.Boolean()),
        sa.column("created_at", UTCDateTime()),
    )
    prompt_columns = ("model", "prompt_type", "prompt_text", "status", "provider")
    requests = sa.table(
        "prompt_requests",
        *(sa.column(name, sa.Uuid()) for name in ("id", "user_id", "team_id", "api_key_id")),
        *(sa.column(name, sa.String()) for name in (*prompt_columns, "upstream_model")),
        *(sa.column(name, UTCDateTime()) for name in ("created_at", "finished_at")),
        sa.column("parameters", sa.JSON()),
        sa.column("metadata", sa.JSON()),
        sa.column("executions", sa.Integer()),
    )
    attempts = sa.table(
        "prompt_attempts",
        *(sa.column(name, sa.Uuid()) for name in ("id", "prompt_id")),
        *(sa.column(name, sa.String()) for name in ("provider", "model", "outcome")),
        *(sa.column(name, UTCDateTime()) for name in ("started_at", "ended_at")),
        *(sa.column(name, sa.Integer()) for name in ("input_tokens", "output_tokens")),
        sa.column("usage_estimated", sa.Boolean()),
        sa.column("cost_usd", sa.String() if "sqlite" in fresh_database else sa.Numeric()),
    )
    responses = sa.table(
        "prompt_responses",
        *(sa.column(name, sa.Uuid()) for name in ("id", "prompt_id")),
        *(sa.column(name, sa.String()) for name in ("response_text", "provider", "upstream_model")),
        *(sa.column(name, sa.Integer()) for name in ("duration_ms", "input_tokens")),
        sa.column("output_tokens", sa.Integer()),
        sa.column("usage_estimated", sa.Boolean()),
        sa.column("cost_usd", sa.String() if "sqlite" in fresh_database else sa.Numeric()),
        sa.column("created_at", UTCDateTime()),
    )
    prompt = {
        "user_id": user,
        "api_key_id": None,
        "prompt_type": "text",
        "prompt_text": "t",
        "provider": "openai",
        "upstream_model": "m",
        "created_at": now,
        "parameters": {},
        "metadata": {},
        "executions": 1,
    }
    rows = [
        {**prompt, "id": uuid.uuid4(), "model": "a", "team_id": team, "status": status}
        for status in ("completed", "failed", "cancelled", "running", "completed")
    ]
    for row in rows:
        row["finished_at"] = now if row["status"] != "running" else None
    engine = create_async_engine(fresh_database)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                users.insert().values(
                    id=user, email="u@example.com", is_admin=False, created_at=now
                )
            )
            await connection.execute(requests.insert(), rows)
            await connection.execute(
                attempts.insert(),
                [
                    {
                        "id": uuid.uuid4(),
                        "prompt_id": row["id"],
                        "provider": "openai",
                        "model": "m",
                        "outcome": "success",
                        "started_at": now - timedelta(days=n % 2),
                        "ended_at": now - timedelta(days=n % 2),
                        "input_tokens": n,
                        "output_tokens": None if n == 1 else 2 * n,
                        "usage_estimated": False,
                        "cost_usd": None if n == 2 else str(Decimal(n) / 10**7),
                    }
                    for n, row in enumerate(rows)
                ],
            )
            await connection.execute(
                responses.insert(),
                [
                    {
                        "id": uuid.uuid4(),
                        "prompt_id": row["id"],
                        "response_text": "r",
                        "provider": "openai",
                        "upstream_model": "m",
                        "duration_ms": duration,
                        "input_tokens": 1,
                        "output_tokens": 1,
                        "usage_estimated": False,
                        "cost_usd": "0",
                        "created_at": now,
                    }
                    for row, duration in ((rows[0], 120), (rows[4], 4_000))
                ],
            )
        await migrate(fresh_database, "0013")
        async with create_session_factory(engine)() as session:
            raw = await raw_sums(session)
            await assert_rollups_match(session)
        assert sum(s.attempts for s in raw.values()) == 5
        assert sum(s.completed for s in raw.values()) == 2
    finally:
        await engine.dispose()
