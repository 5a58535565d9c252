"""/ai/prompt-types: admins define each prompt type's policy; everyone can read it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from app.api.auth import AdminUser, CurrentUser
from app.api.deps import ServicesDep, Session
from app.api.problems import problem_responses
from app.kit.text import TYPE_NAME_PATTERN
from app.services.audit import Actor
from app.services.prompt_types import service
from app.services.prompt_types.schemas import PromptTypeDefinition, PromptTypeList, PromptTypeOut

router = APIRouter(prefix="/ai/prompt-types", tags=["prompt-types"])


TypeNamePath = Annotated[
    str,
    Path(
        pattern=TYPE_NAME_PATTERN,
        description="The type's name, as prompts give it in `prompt_type`: 1 to 64 letters, "
        "digits, `_`, `.`, `:` or `-`, starting with a letter or digit.",
        examples=["summary"],
    ),
]


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    responses = problem_responses(401, *statuses)
    if 403 in responses:
        responses[403]["description"] = "The key's user is not an admin (`admin_required`)."
    if 404 in responses:
        responses[404]["description"] = (
            "No such type (`not_found`), or it was retired (`prompt_type_retired`; its "
            "versions stay readable)."
        )
    return responses


_PUT_PROBLEMS = _problems(403, 409, 413, 422, 503)
_PUT_PROBLEMS[409]["description"] = (
    "`concurrent_change`: someone changed this type at the same moment; read it and retry."
)
_PUT_PROBLEMS[422]["description"] = (
    "Invalid definition (`validation_error`, `invalid_text`, `invalid_template`, "
    "`unknown_model`, `provider_not_configured`)."
)


@router.get("", summary="List the prompt types", responses=_problems(503))
async def list_prompt_types(session: Session, user: CurrentUser) -> PromptTypeList:
    """The current version of every active (not retired) prompt type, by name."""
    rows = await service.list_prompt_types(session)
    return PromptTypeList(
        items=[PromptTypeOut.from_row(row, show_creator=user.is_admin) for row in rows]
    )


@router.get(
    "/{name}",
    summary="Read a prompt type",
    responses=_problems(404, 422, 503),
)
async def get_prompt_type(session: Session, user: CurrentUser, name: TypeNamePath) -> PromptTypeOut:
    """The current version of a prompt type: the policy new prompts of this type run under."""
    row = await service.get_prompt_type(session, name=name)
    return PromptTypeOut.from_row(row, show_creator=user.is_admin)


@router.get(
    "/{name}/versions",
    summary="List a prompt type's versions",
    responses=problem_responses(401, 404, 422, 503),
)
async def list_versions(
    session: Session, user: CurrentUser, name: TypeNamePath
) -> list[PromptTypeOut]:
    """Every version, oldest first, retired ones included: what each `prompt_type_version`
    recorded on a prompt meant. Versions are never changed or deleted."""
    rows = await service.list_versions(session, name=name)
    return [PromptTypeOut.from_row(row, show_creator=user.is_admin) for row in rows]


@router.put(
    "/{name}",
    summary="Define or change a prompt type (admin)",
    response_description="The type's current version (unchanged if it already was this).",
    responses={
        201: {"model": PromptTypeOut, "description": "Defined for the first time: version 1."},
        **_PUT_PROBLEMS,
    },
)
async def put_prompt_type(
    session: Session,
    admin: AdminUser,
    name: TypeNamePath,
    definition: PromptTypeDefinition,
    response: Response,
    services: ServicesDep,
) -> PromptTypeOut:
    """Make this the type's policy for new prompts, as its next version (**201** for the
    first, **200** after). Prompts already recorded keep the version they ran under.

    The body replaces the whole policy (a field left out is no longer enforced). Sending the
    current policy again changes nothing (**200**, same version). A retired type is defined
    again. Checked first: the template parses (`invalid_template`), `default_model` and
    `fallbacks` resolve here (`unknown_model`, `provider_not_configured`). A concurrent
    change of the same type is a **409** `concurrent_change`.

    Other API processes apply the new version within 5 seconds; this one at once.
    """
    defined = await service.define_prompt_type(
        session,
        name=name,
        definition=definition,
        router=services.models,
        actor=Actor(admin),
        on_commit=services.prompt_types.invalidate,
    )
    if defined.created:
        response.status_code = 201
    return PromptTypeOut.from_row(defined.prompt_type, show_creator=True)


@router.delete(
    "/{name}",
    summary="Retire a prompt type (admin)",
    response_description="The version that retired it.",
    responses=_problems(403, 404, 422, 503),
)
async def retire_prompt_type(
    session: Session, admin: AdminUser, name: TypeNamePath, services: ServicesDep
) -> PromptTypeOut:
    """Retire the type: a new version marked `retired`. New prompts of this type are then
    refused (422 `prompt_type_retired`) until a PUT defines it again; its history stays
    readable at `/versions`."""
    row = await service.retire_prompt_type(
        session, name=name, actor=Actor(admin), on_commit=services.prompt_types.invalidate
    )
    return PromptTypeOut.from_row(row, show_creator=True)
