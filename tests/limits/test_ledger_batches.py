"""The ledger with batches of admissions (several requests arriving together, as under load):
on PostgreSQL a batch that fits is admitted in one statement and one that does not is
decided admission by admission; both must give what admitting them one at a time gives."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

from sqlalchemy import func, select

from app.db.database import create_engine
from app.db.models import LimitUsage, Reservation
from app.engine.ledger import Account, Admission, Ledger
from tests.conftest import make_settings, migrate


async def test_a_batch_is_admitted_exactly_up_to_each_limit(fresh_database: str):
    await migrate(fresh_database)
    engine = create_engine(make_settings(fresh_database))
    ledger = Ledger(engine)
    try:
        user = Account("user", uuid.uuid4(), rpm=7, budget_usd=Decimal("1"), budget_period="day")
        key = Account("key", uuid.uuid4(), max_in_flight=5)

        async def admit(*accounts: Account, cost: str = "0.1"):
            return await ledger.admit(Admission(uuid.uuid4(), accounts, 10, Decimal(cost)))

        first = await admit(user, key)  # (the accounts' rows are made)
        assert first.refusal is None and first.held
        # Three at once (a batch, or a few) that fit: each one's standing counts those
        # before it.
        fit = await asyncio.gather(*(admit(user, key) for _ in range(3)))
        assert [v.refusal for v in fit] == [None, None, None]
        assert sorted(s.in_flight for v in fit for s in v.standings if s.account == key) == [
            2, 3, 4,
        ]  # fmt: skip
        # Three more: the key has room for one more in flight.
        more = await asyncio.gather(*(admit(user, key) for _ in range(3)))
        assert [v.refusal is None for v in more] == [True, False, False]
        assert {v.refusal.kind for v in more if v.refusal is not None} == {"in_flight"}
        # Once they have ended, the user's minute has room for two more requests (of 7).
        await ledger.settle([v.prompt_id for v in [first, *fit, more[0]]])
        last = await asyncio.gather(*(admit(user, cost="0.2") for _ in range(3)))
        assert [v.refusal is None for v in last] == [True, True, False]
        assert last[2].refusal is not None and last[2].refusal.kind == "rpm"
        async with engine.connect() as connection:
            rows = {
                row.scope: row for row in await connection.execute(select(LimitUsage.__table__))
            }
            held = await connection.scalar(select(func.count()).select_from(Reservation))
        assert rows["user"].window_requests == 7 and rows["user"].in_flight == 2
        assert rows["user"].reserved_usd == Decimal("0.4")
        assert rows["key"].in_flight == 0 and held == 2
    finally:
        await ledger.aclose()
        await engine.dispose()
