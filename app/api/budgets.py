"""GET /ai/usage/budgets: each budget the caller may see, with its current period's standing."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.auth import CurrentCaller
from app.api.deps import Session
from app.api.problems import problem_responses
from app.services.limits import service as limits
from app.services.limits.schemas import BudgetList

router = APIRouter(prefix="/ai/usage", tags=["usage"])


@router.get("/budgets", summary="Budgets and what they have left", responses=problem_responses(401))
async def list_budgets(session: Session, caller: CurrentCaller) -> BudgetList:
    """Each budget in force that the caller may see (an admin: all; anyone else: their own,
    the server's default as applied to them, their keys', and those of the teams they own or
    view), for its current period (UTC): the limit, what is reserved by prompts admitted and
    not yet ended, what the period's ended prompts cost, what remains, and whether spending
    has passed the budget's warning share (`warn_at`)."""
    return BudgetList(items=await limits.budgets(session, caller))
