"""Each process's copy of the current prompt types, so a submit costs no query.

The whole set of current versions is small (a handful of admin-defined types) and is loaded
in one SELECT, at most once every TTL_SECONDS; a lookup in between is a dict read. A name that
is not there is simply undefined, so unknown names cost nothing and cannot grow the cache.
A change made through this process is seen at once (its commit drops the copy); one made
through another process within TTL_SECONDS.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from app.db.database import SessionFactory
from app.db.models import PromptType
from app.services.prompt_types.service import latest_versions
from app.services.prompt_types.template import Template, parse_template

TTL_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class PromptTypePolicy:
    """An immutable copy of one version, with its template parsed once."""

    name: str
    version: int
    retired: bool
    system_instruction: str | None
    template: Template | None
    default_model: str | None
    fallbacks: list[str] | None
    max_prompt_chars: int | None
    max_output_tokens: int | None
    timeout_seconds: float | None

    @classmethod
    def of(cls, row: PromptType) -> PromptTypePolicy:
        return cls(
            name=row.name,
            version=row.version,
            retired=row.retired,
            system_instruction=row.system_instruction,
            template=parse_template(row.template) if row.template is not None else None,
            default_model=row.default_model,
            fallbacks=list(row.fallbacks) if row.fallbacks is not None else None,
            max_prompt_chars=row.max_prompt_chars,
            max_output_tokens=row.max_output_tokens,
            timeout_seconds=row.timeout_seconds,
        )


class PromptTypeCache:
    def __init__(self, sessions: SessionFactory, *, ttl_seconds: float = TTL_SECONDS) -> None:
        self._sessions = sessions
        self._ttl = ttl_seconds
        self._current: dict[str, PromptTypePolicy] = {}
        self._loaded_at = -math.inf
        self._generation = 0  # bumped by invalidate(): a load that overlapped it is stale
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> PromptTypePolicy | None:
        """The current version of `name` (possibly a retired one), or None if undefined."""
        if time.monotonic() - self._loaded_at > self._ttl:
            await self._reload()
        return self._current.get(name)

    def invalidate(self) -> None:
        """Forget the copy: the next lookup reloads (called once a change is committed)."""
        self._generation += 1
        self._loaded_at = -math.inf

    async def _reload(self) -> None:
        async with self._lock:  # one load at a time; the others wait and use its result
            if time.monotonic() - self._loaded_at <= self._ttl:
                return
            generation, started = self._generation, time.monotonic()
            async with self._sessions() as session:
                rows = await session.scalars(latest_versions())
                current = {row.name: PromptTypePolicy.of(row) for row in rows}
            self._current = current
            if generation == self._generation:
                self._loaded_at = started
