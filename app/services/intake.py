"""The intake: the one place where a request for work becomes a `NewPrompt`.

`POST /ai/prompts/` and `POST /v1/chat/completions` (their routes and their fast paths alike)
each turn their body into an `Ask`, and `Intake.admit` does the rest, in this order:
the prompt type's current policy (app/services/prompt_types/policy.py), the size limit,
routing and fallbacks (the catalogue), the parameter checks every candidate provider must
honour (temperature and max_tokens; then each field and message feature the request uses,
against the translation matrix of app/providers/fidelity.py and the model's catalogue
capabilities), then the per-request policies of the user (MAX_PENDING_PER_USER), and last
the rate limits and budgets of the caller's key, user and team
(app/services/limits/governor.py). Whatever is wrong with a request is raised here as an
`AppError`, before anything is written: the fast paths rely on that to hand a refused request
to its route, which then answers it. The limits are the one step that writes: it charges the
request to the limits ledger (a refusal charges nothing), and `undo` gives that back if the
prompt is not recorded after all.

A policy that every request creating work must pass (rate limits, budgets, ...) belongs in
`admit`: it is the one call both endpoints, routed or fast-pathed, go through.
`POST /v1/embeddings` goes through `admit_embedding`, its sibling for an `EmbeddingAsk`
(the size limit, routing, and what the model and its provider can do; prompt types do not
apply to embeddings): a per-request policy belongs in both.

Embedding models (catalogue capability `embeddings`) serve embeddings only, and every other
model chats only: `admit` refuses the first, `admit_embedding` the second, each with a 422
`model_not_supported` (a 400 under /v1).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NoReturn

from pydantic_core import to_json

from app.db.base import utcnow
from app.db.models import NewPrompt
from app.engine.embedding_prompts import (
    EMBEDDING_PROMPT_TYPE,
    embedding_parameters,
    stored_text,
)
from app.engine.ledger import Account
from app.kit.errors import Forbidden, InvalidInput
from app.providers import fidelity, forced_tool
from app.providers.base import Embedder, Message, message_text
from app.providers.catalogue import embedding_model, structured_output_by_tool
from app.providers.registry import ModelResolver, Route
from app.services.caps import PendingGauge
from app.services.limits.governor import Governor, Grant, estimate
from app.services.prompt_types.cache import PromptTypeCache
from app.services.prompt_types.policy import Applied, apply_policy


@dataclass(slots=True)  # (not frozen: a frozen dataclass costs a µs more per request to build)
class Ask:
    """What a client asks for, whichever endpoint it used, before any policy.

    A conversation (/v1, or /ai/prompts/ with `messages`) gives its `messages`, and `text` is
    the last user message's text (at index `last`), which a prompt type's template wraps; a
    plain prompt gives only `text`. An `Ask` is made for one `Intake.admit`, which may change
    its `messages` in place.
    """

    user_id: uuid.UUID
    model: str | None
    prompt_type: str
    text: str
    variables: dict[str, str] | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout_seconds: float | None = None
    fallbacks: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    messages: list[Message] | None = None
    last: int = -1
    # Stored with the parameters as they are (a chat's `stream`).
    passthrough: dict[str, Any] = field(default_factory=dict)
    # The fields of the translation matrix the request uses (app/providers/fidelity.py), in
    # OpenAI's shape: `tools`, `response_format`, `stop`, ...
    options: dict[str, Any] = field(default_factory=dict)
    # Leave out what the provider cannot honour, rather than refuse it: as the request (or
    # else its key) says; None: the server's default (DROP_PARAMS).
    drop_params: bool | None = None
    # Whether the prompt waits in the queue (counted against MAX_PENDING_PER_USER); a chat
    # is run at once by the process that received it.
    queued: bool = True
    # The key it is made with (recorded), the team that key is scoped to (recorded: the
    # prompt is billed to and shown in it), and the models the key may use (None: any).
    api_key_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    allowed_models: frozenset[str] | None = None
    # The rate limits and budgets it is charged to (the caller's), and, once admitted, what
    # its answer carries of them (`Grant.headers`).
    accounts: tuple[Account, ...] = ()
    grant: Grant | None = None


@dataclass(slots=True)
class EmbeddingAsk:
    """What a client of `POST /v1/embeddings` asks for: vectors of `inputs` (each non-empty
    text, checked by the request's schema) from `model`."""

    user_id: uuid.UUID
    model: str
    inputs: list[str]
    encoding_format: str = "float"  # how the client wants them: `float` or `base64`
    dimensions: int | None = None
    user: str | None = None  # the client's end-user id (OpenAI's `user`)
    api_key_id: uuid.UUID | None = None  # as for `Ask`
    team_id: uuid.UUID | None = None
    allowed_models: frozenset[str] | None = None
    accounts: tuple[Account, ...] = ()
    grant: Grant | None = None


class Intake:
    """Turns an `Ask` into the checked `NewPrompt` to record; one per process (`Services`)."""

    def __init__(
        self,
        *,
        models: ModelResolver,
        prompt_types: PromptTypeCache,
        pending: PendingGauge,
        max_prompt_chars: int,
        drop_params: bool = False,
        governor: Governor | None = None,
    ) -> None:
        self.models = models
        self.prompt_types = prompt_types
        self.pending = pending
        self.max_prompt_chars = max_prompt_chars
        self.drop_params = drop_params  # the server's default (DROP_PARAMS)
        self.governor = governor  # rate limits and budgets (None: none are enforced)

    def undo(self, prompt: NewPrompt) -> None:
        """Give back what an admitted prompt holds of its limits when it is not recorded after
        all (its insert failed, or its request was cancelled meanwhile)."""
        if prompt.limited and self.governor is not None:
            self.governor.abandon(prompt.id)

    async def admit(self, ask: Ask) -> NewPrompt:
        """The prompt to record for `ask`, or the `AppError` that refuses it. Nothing is
        written; last, a queued prompt is counted against its owner's cap, and a caller with
        limits is charged to the limits ledger (`undo` gives it back)."""
        models, max_chars = self.models, self.max_prompt_chars
        applied = apply_policy(
            await self.prompt_types.get(ask.prompt_type),
            prompt_type=ask.prompt_type,
            model=ask.model,
            text=ask.text,
            variables=ask.variables,
            fallbacks=ask.fallbacks,
            system_prompt=ask.system_prompt,
            max_tokens=ask.max_tokens,
            timeout_seconds=ask.timeout_seconds,
            models=models,
            max_prompt_chars=max_chars,
        )
        messages = ask.messages
        if messages is not None and applied.text != ask.text:  # the type's template wrapped it
            last = messages[ask.last]
            content = last["content"]
            images = (
                [p for p in content if p["type"] != "text"] if isinstance(content, list) else []
            )
            wrapped: Any = (
                [{"type": "text", "text": applied.text}, *images] if images else applied.text
            )
            messages[ask.last] = {"role": "user", "content": wrapped}
        self._check_size(ask, applied, messages)
        if applied.model is None:
            raise InvalidInput(
                f"model is required: prompt type '{ask.prompt_type}' is not defined here, so "
                "it has no default model.",
                code="model_required",
            )
        route = models.resolve(applied.model)
        permitted(route, ask.allowed_models)
        fallbacks = models.fallbacks(route, applied.fallbacks)
        if ask.allowed_models is not None:
            fallbacks = _permitted_fallbacks(
                fallbacks, ask.allowed_models, explicit=applied.fallbacks is not None
            )
        for candidate in (route, *fallbacks):
            if embedding_model(candidate.entry):
                self._refuse_embedding_model(candidate, fallback=candidate is not route)
            check_parameters(
                candidate, models, temperature=ask.temperature, max_tokens=applied.max_tokens
            )
        dropped: dict[str, list[str]] | None = None
        used = fidelity.used(ask.options, messages or ())
        if used:
            dropped = {}
            drop = self.drop_params if ask.drop_params is None else ask.drop_params
            fallbacks = self._honoured(
                route,
                fallbacks,
                used,
                ask.options,
                drop=drop,
                explicit=applied.fallbacks is not None,
                dropped=dropped,
            )
        parameters: dict[str, Any] = {}
        if messages is not None:
            parameters["messages"] = messages
        if ask.options:
            parameters.update(ask.options)
        if dropped:
            parameters["dropped_params"] = dropped
        # (a chat's instruction is sent before its conversation: executor.build_messages)
        if applied.system_instruction is not None:
            parameters["system_prompt"] = applied.system_instruction
        if ask.temperature is not None:
            parameters["temperature"] = ask.temperature
        if applied.max_tokens is not None:
            parameters["max_tokens"] = applied.max_tokens
        if applied.timeout_seconds is not None:
            parameters["timeout_seconds"] = applied.timeout_seconds
        if fallbacks:
            parameters["fallbacks"] = [f.model for f in fallbacks]
        if ask.passthrough:
            parameters.update(ask.passthrough)
        if applied.template_input is not None:
            parameters["template_input"] = applied.template_input
        prompt = NewPrompt(
            id=uuid.uuid4(),
            user_id=ask.user_id,
            api_key_id=ask.api_key_id,
            team_id=ask.team_id,
            model=applied.model,
            prompt_type=ask.prompt_type,
            prompt_type_version=applied.version,
            prompt_text=applied.text,
            created_at=utcnow(),
            provider=route.provider,
            upstream_model=route.upstream_model,
            parameters=parameters,
            meta=ask.metadata,
        )
        if ask.queued:
            await self.pending.admit(ask.user_id)
        if ask.accounts and self.governor is not None:
            characters, parts, pictures = _measure(applied.text, messages)
            # (what else is sent as tokens: the instruction, and tools or a schema)
            characters += len(applied.system_instruction or "")
            if ask.options:
                characters += len(to_json(ask.options))
            n = ask.options.get("n")
            tokens, cost = estimate(
                candidates=(route, *fallbacks),
                characters=characters,
                messages=parts,
                images=pictures,
                max_tokens=applied.max_tokens,
                n=n if isinstance(n, int) and n > 1 else 1,
            )
            ask.grant = await self.governor.admit(prompt.id, ask.accounts, tokens=tokens, cost=cost)
            prompt.limited = ask.grant.held
        return prompt

    async def admit_embedding(self, ask: EmbeddingAsk) -> NewPrompt:
        """The embedding prompt to record for `ask` (app/engine/embedding_prompts.py says how
        it is stored), or the `AppError` that refuses it; nothing is written. It runs at once,
        so it is not counted against MAX_PENDING_PER_USER."""
        total = sum(len(text) for text in ask.inputs)
        limit = self.max_prompt_chars
        if total > limit:
            raise InvalidInput(
                f"The input has {total:,} characters; the limit here is {limit:,} "
                "(MAX_PROMPT_CHARS).",
                code="prompt_too_large",
                extra={"limit": limit, "parameter": "input"},
            )
        route = self.models.resolve(ask.model)
        permitted(route, ask.allowed_models)
        provider = self.models.providers[route.provider]
        if not isinstance(provider, Embedder):
            self._refuse_for_embeddings(
                route, f"the {route.provider} provider has no embeddings API"
            )
        if route.entry is not None and not embedding_model(route.entry):
            self._refuse_for_embeddings(route, f"'{route.model}' is a chat model")
        if ask.dimensions is not None and not provider.embeds_dimensions:
            raise InvalidInput(
                f"'dimensions' cannot be honoured by {route.provider} for model {route.model}: "
                "its vectors have the model's own size. Leave it out, or choose another model.",
                code="unsupported_parameter",
                extra={
                    "parameter": "dimensions",
                    "model": route.model,
                    "provider": route.provider,
                },
            )
        prompt = NewPrompt(
            id=uuid.uuid4(),
            user_id=ask.user_id,
            api_key_id=ask.api_key_id,
            team_id=ask.team_id,
            model=ask.model,
            prompt_type=EMBEDDING_PROMPT_TYPE,
            prompt_type_version=None,
            prompt_text=stored_text(ask.inputs),
            created_at=utcnow(),
            provider=route.provider,
            upstream_model=route.upstream_model,
            parameters=embedding_parameters(
                model=ask.model,
                inputs=ask.inputs,
                encoding_format=ask.encoding_format,
                dimensions=ask.dimensions,
                user=ask.user,
            ),
            meta={},
        )
        if ask.accounts and self.governor is not None:
            tokens = math.ceil(total / 4)
            cost = route.price.cost(total, 0) if route.price is not None else Decimal(0)
            ask.grant = await self.governor.admit(prompt.id, ask.accounts, tokens=tokens, cost=cost)
            prompt.limited = ask.grant.held
        return prompt

    def _embedding_models(self) -> list[str]:
        return [e.name for e in self.models.available() if embedding_model(e)]

    def _refuse_for_embeddings(self, route: Route, why: str) -> NoReturn:
        available = ", ".join(self._embedding_models()) or "none is configured here"
        raise InvalidInput(
            f"Model '{route.model}' cannot embed: {why}. POST /v1/embeddings takes an "
            f"embedding model ({available}).",
            code="model_not_supported",
            extra={"parameter": "model", "model": route.model, "provider": route.provider},
        )

    def _refuse_embedding_model(self, route: Route, *, fallback: bool) -> NoReturn:
        role = "fallback" if fallback else "model"
        raise InvalidInput(
            f"'{route.model}' is an embedding model: it serves POST /v1/embeddings only, "
            f"not chats or prompts. Choose a chat model as the {role}.",
            code="model_not_supported",
            extra={
                "parameter": "fallbacks" if fallback else "model",
                "model": route.model,
                "provider": route.provider,
            },
        )

    def _honoured(
        self,
        route: Route,
        fallbacks: list[Route],
        used: list[str],
        asked: dict[str, Any],
        *,
        drop: bool,
        explicit: bool,
        dropped: dict[str, list[str]],
    ) -> list[Route]:
        """Check what the request uses against each candidate model: its provider's column of
        the translation matrix and the model's catalogue capabilities. The model asked for
        must honour all of it (else a 400 naming the first field it cannot); a fallback that
        cannot is refused if the request (or its prompt type) named it, and left out if it
        came from the catalogue. With `drop`, option fields are left out instead (and listed
        in `dropped`, by model); image parts and tool turns are never left out."""
        kept: list[Route] = []
        for candidate in (route, *fallbacks):
            problems = self.unsupported(candidate, used, asked)
            if drop:
                options = [name for name in problems if name in fidelity.OPTION_FIELDS]
                if options:
                    dropped[candidate.model] = options
                problems = {k: v for k, v in problems.items() if k not in options}
            if not problems:
                if candidate is not route:
                    kept.append(candidate)
                continue
            if candidate is route or explicit:
                name, reason = next(iter(problems.items()))
                role = "model" if candidate is route else "fallback"
                raise InvalidInput(
                    f"'{name}' cannot be honoured by {candidate.provider} for {role} "
                    f"{candidate.model}: {reason}. Leave it out, choose another model, or ask "
                    "to drop what cannot be honoured (drop_params).",
                    code="unsupported_parameter",
                    extra={
                        "parameter": name,
                        "model": candidate.model,
                        "provider": candidate.provider,
                    },
                )
        return kept

    def unsupported(self, route: Route, used: list[str], asked: dict[str, Any]) -> dict[str, str]:
        """Of the matrix rows `used` (the request's options: `asked`), those `route` cannot
        honour, with why. `response_format` on an Anthropic model without native structured
        output is served by a forced tool, which some other options cannot go with
        (app/providers/forced_tool.py): it is refused here, before anything is recorded."""
        kind = self.models.providers[route.provider].kind
        problems = {name: fidelity.why(kind, name) for name in fidelity.refused_fields(kind, used)}
        capabilities = route.entry.capabilities if route.entry is not None else None
        if capabilities is not None:
            for name in used:
                need = fidelity.BY_NAME[name].capability
                if need is not None and need not in capabilities and name not in problems:
                    problems[name] = f"the catalogue does not list {need} for this model"
        if (
            "response_format" in used
            and "response_format" not in problems
            and kind == "anthropic"
            and structured_output_by_tool(route.entry)
            and (why := forced_tool.conflict(asked)) is not None
        ):
            problems["response_format"] = why
        return problems

    def _check_size(self, ask: Ask, applied: Applied, messages: list[Message] | None) -> None:
        """The prompt's characters (a chat's: all its messages') within the limit, that of
        its prompt type when it sets a lower one than MAX_PROMPT_CHARS."""
        text, limit, version = applied.text, applied.max_prompt_chars, applied.version
        by_type = limit < self.max_prompt_chars
        whose = f"prompt type '{ask.prompt_type}'" if by_type else "MAX_PROMPT_CHARS"
        if messages is not None:
            total = 0
            for message in messages:
                content = message["content"]
                plain = content.__class__ is str and "tool_calls" not in message
                total += len(content) if plain else len(message_text(message))  # type: ignore[arg-type]
            if total > limit:
                raise InvalidInput(
                    f"The messages have {total:,} characters; the limit here is {limit:,} "
                    f"({whose}).",
                    code="prompt_too_large",
                    extra={"limit": limit, "parameter": "messages"},
                )
        elif len(text) > limit:
            if version is None:
                raise InvalidInput(
                    f"prompt_text has {len(text):,} characters; the limit here is {limit:,} "
                    "(MAX_PROMPT_CHARS).",
                    code="prompt_too_large",
                    extra={"limit": limit},
                )
            templated = applied.template_input is not None
            rendered = " as rendered by its template" if templated else ""
            raise InvalidInput(
                f"The prompt{rendered} has {len(text):,} characters; prompt type "
                f"'{ask.prompt_type}' allows at most {limit:,}.",
                code="prompt_too_large",
                extra={
                    "limit": limit,
                    "prompt_type": ask.prompt_type,
                    "prompt_type_version": version,
                },
            )


def _measure(text: str, messages: list[Message] | None) -> tuple[int, int, int]:
    """(characters, messages, image parts) of a prompt, for what the limits charge it."""
    if messages is None:
        return len(text), 1, 0
    characters = images = 0
    for message in messages:
        content = message["content"]
        characters += len(message_text(message))
        if isinstance(content, list):
            images += sum(1 for part in content if part["type"] != "text")
    return characters, len(messages), images


def check_parameters(
    route: Route, models: ModelResolver, *, temperature: float | None, max_tokens: int | None
) -> None:
    """Refuse what a provider cannot honour, rather than dropping it silently."""
    highest = models.providers[route.provider].max_temperature
    if temperature is not None and (highest is None or temperature > highest):
        accepted = "no temperature" if highest is None else f"at most {highest:g}"
        raise InvalidInput(
            f"temperature {temperature} cannot be honoured by {route.provider} "
            f"({accepted}) for model {route.model}.",
            code="unsupported_parameter",
            extra={"parameter": "temperature", "model": route.model},
        )
    limit = route.entry.max_output_tokens if route.entry else None
    if max_tokens is not None and limit is not None and max_tokens > limit:
        raise InvalidInput(
            f"max_tokens {max_tokens} is above the {limit} that model {route.model} can produce.",
            code="unsupported_parameter",
            extra={"parameter": "max_tokens", "model": route.model},
        )


def names_of(route: Route) -> set[str]:
    """The names a model goes by: as asked, and the catalogue entry's name and aliases."""
    names = {route.model}
    if route.entry is not None:
        names.add(route.entry.name)
        names.update(route.entry.aliases)
    return names


def permitted(route: Route, allowed: frozenset[str] | None) -> None:
    """Refuse a model the key may not use (403 `model_not_allowed`), by any of its names."""
    if allowed is None or not allowed.isdisjoint(names_of(route)):
        return
    raise Forbidden(
        f"This API key may not use model '{route.model}': it is limited to "
        f"{', '.join(sorted(allowed)) or 'no model'}.",
        code="model_not_allowed",
        extra={"parameter": "model", "model": route.model},
    )


def _permitted_fallbacks(
    fallbacks: list[Route], allowed: frozenset[str], *, explicit: bool
) -> list[Route]:
    """The fallbacks a limited key may use: one the request named is refused like its model;
    one from the catalogue is left out."""
    if explicit:
        for fallback in fallbacks:
            permitted(fallback, allowed)
        return fallbacks
    return [f for f in fallbacks if not allowed.isdisjoint(names_of(f))]
