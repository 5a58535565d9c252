"""What a caller may see and do with prompts, by their roles: their own prompts always; a
team's prompts as its owner or viewer (an owner may also cancel them); everything as an admin.
A prompt outside that is answered exactly as a missing one (404), so nobody learns that another
team's prompt exists."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, or_, true

from app.db.models import PromptRequest, TeamRole
from app.services.auth.authenticator import Caller

_READS = frozenset({TeamRole.OWNER, TeamRole.VIEWER})


@dataclass(frozen=True, slots=True)
class PromptScope:
    user_id: uuid.UUID
    admin: bool = False
    read_teams: frozenset[uuid.UUID] = frozenset()  # owner or viewer: all the team's prompts
    owned_teams: frozenset[uuid.UUID] = frozenset()  # owner: may cancel them too

    @classmethod
    def of(cls, caller: Caller) -> PromptScope:
        roles = caller.roles
        if not roles:  # (most callers: their own prompts, the query as it always was)
            return cls(caller.user.id, admin=caller.user.is_admin)
        return cls(
            caller.user.id,
            admin=caller.user.is_admin,
            read_teams=frozenset(team for team, role in roles.items() if role in _READS),
            owned_teams=frozenset(team for team, role in roles.items() if role == TeamRole.OWNER),
        )

    @classmethod
    def own(cls, user_id: uuid.UUID) -> PromptScope:
        """A user's own prompts only (what the gateway reads back for them itself)."""
        return cls(user_id)

    def visible(self) -> ColumnElement[bool]:
        """The prompts this scope sees, as a condition on `prompt_requests`."""
        p = PromptRequest
        if self.admin:
            return true()
        if not self.read_teams:
            return p.user_id == self.user_id
        return or_(p.user_id == self.user_id, p.team_id.in_(self.read_teams))

    def may_cancel(self, user_id: uuid.UUID, team_id: uuid.UUID | None) -> bool:
        """Whether a prompt this scope sees (made by `user_id`, for `team_id`) may be cancelled
        by it: its maker, the team's owner, or an admin; a viewer only reads."""
        return (
            self.admin
            or user_id == self.user_id
            or (team_id is not None and team_id in self.owned_teams)
        )
