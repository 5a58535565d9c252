"""The admin API's shapes (`/ai/admin`): users, teams and their members, API keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool

from app.db.models import ApiKey, TeamMember, TeamRole
from app.kit.text import Text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(_Strict):
    email: Text = Field(max_length=320, examples=["ada@example.com"])
    name: Text | None = Field(None, max_length=200)
    is_admin: StrictBool = False


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    name: str | None
    is_admin: bool
    created_at: datetime
    disabled_at: datetime | None


class TeamCreate(_Strict):
    name: Text = Field(min_length=1, max_length=100, examples=["research"])
    description: Text | None = Field(None, max_length=2000)


class MemberSet(_Strict):
    role: TeamRole = Field(
        description="`owner` (sees and may cancel all the team's prompts), `member` (makes "
        "prompts, sees their own) or `viewer` (sees all the team's prompts, changes nothing)."
    )


class MemberOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    user_id: uuid.UUID
    role: TeamRole
    created_at: datetime

    @classmethod
    def of(cls, member: TeamMember) -> MemberOut:
        return cls.model_validate(member)


class TeamOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    created_at: datetime
    members: list[MemberOut]


class TeamList(BaseModel):
    items: list[TeamOut]


class KeyCreate(_Strict):
    user_id: uuid.UUID = Field(description="The user the key belongs to.")
    name: Text = Field("default", min_length=1, max_length=100)
    description: Text | None = Field(None, max_length=2000)
    team_id: uuid.UUID | None = Field(
        None,
        description="Scope the key to this team: its prompts are billed to the team and "
        "shown to its owners and viewers. The user must be the team's owner or a member.",
    )
    allowed_models: list[Text] | None = Field(
        None,
        max_length=100,
        description="The only models the key may use (catalogue names, aliases or "
        "`provider/model`, each resolving here); null: any. Another model is a 403 "
        "`model_not_allowed`; a catalogue fallback outside the list is left out.",
    )
    expires_at: AwareDatetime | None = Field(None, description="After this, a 401.")
    drop_params: StrictBool | None = Field(
        None,
        description="Leave out, rather than refuse, what the chosen provider cannot honour; "
        "null: as each request says, else the server's DROP_PARAMS.",
    )


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    prefix: str = Field(description="The key's first characters, to tell it apart.")
    description: str | None
    team_id: uuid.UUID | None
    allowed_models: list[str] | None
    drop_params: bool | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls.model_validate(key)


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself: shown only now, never stored or shown again.")


class KeyList(BaseModel):
    items: list[KeyOut]


class UserList(BaseModel):
    items: list[UserOut]
