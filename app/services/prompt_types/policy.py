"""How a defined prompt type shapes a prompt at submit.

A request whose `prompt_type` is defined gets that type's current version applied: its
default model and fallbacks where the request gives none, its limits as ceilings (asking more
is a 422, never a silent cut: a client must not get less than it believes it asked for), its
system instruction before the request's own `system_prompt`, and its template around the
request's text. The prompt then stores the rendered text as `prompt_text` (what the model
is sent) and the request's own text and variables in `parameters["template_input"]`, so the
executor needs to know nothing about types. An undefined `prompt_type` is free text as
before: no policy, no version.

A chat through `/v1/chat/completions` is a prompt of type `chat` (or the one its
`prompt_type` extension names), and a defined type governs it the same way: the intake
(app/services/intake.py) applies `apply_policy` to every request, whichever endpoint it came
through, so an admin's ceilings hold for all of them. The template wraps a chat's last user
message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.kit.errors import InvalidInput
from app.providers.registry import ModelResolver
from app.services.prompt_types.cache import PromptTypePolicy
from app.services.prompt_types.template import PROMPT_TEXT


@dataclass(slots=True)  # (built on every request: not frozen, which costs more to build)
class Applied:
    """A request as it runs under its prompt type's current version (or as asked, when the
    type is not defined)."""

    model: str | None  # the request's, else the type's default
    text: str  # the request's text as the model gets it (rendered by the template)
    max_prompt_chars: int  # the limit on the prompt's characters (a chat's: all messages')
    fallbacks: list[str] | None  # the request's, else the type's; None: the catalogue's
    system_instruction: str | None  # the type's instruction, then the request's own
    max_tokens: int | None
    timeout_seconds: float | None
    version: int | None = None  # the type version it ran under; None for an undefined type
    template_input: dict[str, Any] | None = None  # the request's text and variables


def apply_policy(
    policy: PromptTypePolicy | None,
    *,
    prompt_type: str | None,
    model: str | None,
    text: str,
    variables: dict[str, str] | None,
    fallbacks: list[str] | None,
    system_prompt: str | None,
    max_tokens: int | None,
    timeout_seconds: float | None,
    models: ModelResolver,
    max_prompt_chars: int,
) -> Applied:
    """The request under `policy`, the current version of its type, whichever endpoint it
    came through: an admin's ceilings hold for `/ai/prompts/` and `/v1` alike."""
    if policy is None:
        _refuse_variables(prompt_type, variables)
        return Applied(
            model, text, max_prompt_chars, fallbacks, system_prompt, max_tokens, timeout_seconds
        )
    name = policy.name
    _refuse_retired(policy)
    where = {"prompt_type": name, "prompt_type_version": policy.version}
    model = model or policy.default_model
    if model is None:
        raise InvalidInput(
            f"model is required: prompt type '{name}' has no default model.",
            code="model_required",
            extra=where,
        )
    fallbacks = fallbacks if fallbacks is not None else policy.fallbacks
    return Applied(
        model=model,
        text=_render(text, variables, policy),
        max_prompt_chars=min(policy.max_prompt_chars or max_prompt_chars, max_prompt_chars),
        fallbacks=fallbacks,
        system_instruction="\n\n".join(
            part for part in (policy.system_instruction, system_prompt) if part
        )
        or None,
        max_tokens=_max_tokens(max_tokens, policy, models, model, fallbacks),
        timeout_seconds=_ceiling("timeout_seconds", timeout_seconds, policy.timeout_seconds, where),
        version=policy.version,
        template_input=(
            {PROMPT_TEXT: text, "variables": dict(variables or {})} if policy.template else None
        ),
    )


def _refuse_retired(policy: PromptTypePolicy) -> None:
    if policy.retired:
        raise InvalidInput(
            f"Prompt type '{policy.name}' was retired (version {policy.version}); use another "
            "type, or ask an admin to define it again.",
            code="prompt_type_retired",
            extra={"prompt_type": policy.name, "prompt_type_version": policy.version},
        )


def _refuse_variables(name: str | None, variables: dict[str, str] | None) -> None:
    if variables:
        raise InvalidInput(
            f"variables were given, but prompt type '{name}' is not defined here, so there "
            "is no template to fill.",
            code="unknown_template_variable",
            extra={"unknown": sorted(variables), "expected": []},
        )


def _render(text: str, variables: dict[str, str] | None, policy: PromptTypePolicy) -> str:
    given = variables or {}
    expected = policy.template.variables if policy.template else ()
    unknown = sorted(set(given) - set(expected))
    if unknown:
        raise InvalidInput(
            f"Prompt type '{policy.name}' has no template variable "
            f"{', '.join(repr(v) for v in unknown)}; it takes "
            f"{', '.join(repr(v) for v in expected) or 'none'}.",
            code="unknown_template_variable",
            extra={"unknown": unknown, "expected": list(expected)},
        )
    if policy.template is None:
        return text
    missing = [v for v in expected if v not in given]
    if missing:
        raise InvalidInput(
            f"Prompt type '{policy.name}' needs the template variable '{missing[0]}' "
            f"in `variables` (missing: {', '.join(missing)}).",
            code="missing_template_variable",
            extra={"missing": missing, "expected": list(expected)},
        )
    return policy.template.render({**given, PROMPT_TEXT: text})


def _ceiling(field: str, asked: float | None, ceiling: float | None, where: dict[str, Any]) -> Any:
    """The request's value within the type's ceiling, or the ceiling when it gives none."""
    if ceiling is None or asked is None:
        return asked if asked is not None else ceiling
    if asked > ceiling:
        raise InvalidInput(
            f"{field} {asked:g} is above the {ceiling:g} that prompt type "
            f"'{where['prompt_type']}' allows.",
            code=f"{field.removesuffix('_seconds')}_too_large",
            extra={"parameter": field, "limit": ceiling, **where},
        )
    return asked


def _max_tokens(
    asked: int | None,
    policy: PromptTypePolicy,
    models: ModelResolver,
    model: str,
    fallbacks: list[str] | None,
) -> int | None:
    """The request's max_tokens within the type's ceiling; without one, the ceiling lowered
    to what the model and its fallbacks can produce (so a default never fails a request)."""
    where = {"prompt_type": policy.name, "prompt_type_version": policy.version}
    tokens: int | None = _ceiling("max_tokens", asked, policy.max_output_tokens, where)
    if asked is not None or tokens is None:
        return tokens
    route = models.resolve(model)
    for candidate in (route, *models.fallbacks(route, fallbacks)):
        limit = candidate.entry.max_output_tokens if candidate.entry else None
        if limit is not None:
            tokens = min(tokens, limit)
    return tokens
