"""Defining, retiring and reading prompt types. Plain async functions on a session.

Versions are append-only rows (see app/db/models/prompt_type.py): a PUT that changes something
adds version n + 1, a DELETE adds a `retired` version, and nothing is ever updated or
deleted, so the history prompts point to stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import PromptType
from app.kit.errors import Conflict, InvalidInput, NotFound
from app.providers.registry import ModelResolver
from app.services import audit
from app.services.audit import Actor
from app.services.prompt_types.schemas import PromptTypeDefinition
from app.services.prompt_types.template import TemplateError, parse_template


@dataclass(frozen=True, slots=True)
class Defined:
    prompt_type: PromptType
    created: bool  # version 1: the name was never defined before


def latest_versions() -> Select[PromptType]:
    """The highest version of every name (retired ones included), by name."""
    latest = (
        select(PromptType.name, func.max(PromptType.version).label("version"))
        .group_by(PromptType.name)
        .subquery()
    )
    return (
        select(PromptType)
        .join(
            latest,
            (PromptType.name == latest.c.name) & (PromptType.version == latest.c.version),
        )
        .order_by(PromptType.name)
    )


async def _latest(session: AsyncSession, name: str) -> PromptType | None:
    row: PromptType | None = await session.scalar(
        select(PromptType).where(PromptType.name == name).order_by(PromptType.version.desc())
    )
    return row


async def list_prompt_types(session: AsyncSession) -> list[PromptType]:
    """The current version of each type that is not retired."""
    rows = await session.scalars(latest_versions())
    return [row for row in rows if not row.retired]


async def get_prompt_type(session: AsyncSession, *, name: str) -> PromptType:
    """The current version; a retired or never-defined type is a 404."""
    row = await _latest(session, name)
    if row is None:
        raise NotFound(f"No prompt type '{name}'.")
    if row.retired:
        raise NotFound(
            f"Prompt type '{name}' was retired in version {row.version}; its history is at "
            f"/ai/prompt-types/{name}/versions.",
            code="prompt_type_retired",
            extra={"version": row.version},
        )
    return row


async def list_versions(session: AsyncSession, *, name: str) -> list[PromptType]:
    """Every version of a type, oldest first, retired ones included."""
    rows = list(
        await session.scalars(
            select(PromptType).where(PromptType.name == name).order_by(PromptType.version)
        )
    )
    if not rows:
        raise NotFound(f"No prompt type '{name}'.")
    return rows


def check_definition(definition: PromptTypeDefinition, router: ModelResolver) -> None:
    """Refuse a policy that could not be applied: a template that does not parse, or models
    that do not resolve here (the same 422 `unknown_model` a prompt would get)."""
    if definition.template is not None:
        try:
            parse_template(definition.template)
        except TemplateError as exc:
            raise InvalidInput(f"template: {exc}", code="invalid_template") from None
    if definition.default_model is not None:
        router.resolve(definition.default_model)
    router.distinct_routes(list(definition.fallbacks or ()))


async def define_prompt_type(
    session: AsyncSession,
    *,
    name: str,
    definition: PromptTypeDefinition,
    router: ModelResolver,
    actor: Actor,
    on_commit: Callable[[], None],
) -> Defined:
    """Make `definition` the type's current policy as a new version, unless it already is
    (then nothing is written: PUT is idempotent). A retired type is revived.

    `on_commit` runs once the change is committed (the caches drop their copy then, not
    before, so none can reload the old version after being told to forget it)."""
    check_definition(definition, router)
    policy = definition.model_dump()
    current = await _latest(session, name)
    if current is not None and not current.retired and current.policy() == policy:
        return Defined(current, created=False)
    version = 1 if current is None else current.version + 1
    return Defined(
        await _add_version(session, name, version, policy, actor, on_commit, before=current),
        created=version == 1,
    )


async def retire_prompt_type(
    session: AsyncSession, *, name: str, actor: Actor, on_commit: Callable[[], None]
) -> PromptType:
    """Add a `retired` version (a copy of the current policy); the history is kept and a
    later PUT defines the type again as the next version."""
    current = await get_prompt_type(session, name=name)
    return await _add_version(
        session,
        name,
        current.version + 1,
        current.policy(),
        actor,
        on_commit,
        before=current,
        retired=True,
    )


async def _add_version(
    session: AsyncSession,
    name: str,
    version: int,
    policy: dict[str, Any],
    actor: Actor,
    on_commit: Callable[[], None],
    *,
    before: PromptType | None,
    retired: bool = False,
) -> PromptType:
    row = PromptType(name=name, version=version, retired=retired, created_by=actor.id, **policy)
    session.add(row)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        # Two admins changed the type at once (PostgreSQL; SQLite serialises writers).
        raise Conflict(
            f"Prompt type '{name}' was changed at the same time by someone else; read it "
            "again and retry.",
            code="concurrent_change",
        ) from None
    event.listen(session.sync_session, "after_commit", lambda _: on_commit(), once=True)
    audit.record(
        session,
        actor,
        "prompt_type.retire" if retired else "prompt_type.define",
        "prompt_type",
        name,
        before=_audited(before) if before is not None else None,
        after=_audited(row),
    )
    return row


def _audited(row: PromptType) -> dict[str, Any]:
    return {"version": row.version, "retired": row.retired, **row.policy()}
