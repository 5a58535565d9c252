"""GET /ai/models: the catalogue models this server can run, with their prices and limits."""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.auth import CurrentUser
from app.api.deps import ServicesDep
from app.api.problems import problem_responses

router = APIRouter(prefix="/ai/models", tags=["models"])


class ModelOut(BaseModel):
    name: str = Field(examples=["gpt-4o-mini"])
    aliases: list[str] = Field(description="Other names that route to the same model.")
    provider: str = Field(examples=["openai"])
    upstream_model: str = Field(description="The name the provider knows it by.")
    input_price: Decimal = Field(description="USD per million input tokens.")
    output_price: Decimal = Field(description="USD per million output tokens.")
    cached_input_price: Decimal | None = Field(description="USD per million cached input tokens.")
    context_window: int | None
    max_output_tokens: int | None
    fallbacks: list[str] = Field(description="Tried in order when this model keeps failing.")
    capabilities: list[str] | None = Field(
        description="What it can do beyond text: tools, vision, structured_output, reasoning, "
        "embeddings. A request that needs more is refused (400 `unsupported_parameter`). "
        "null: not stated in the catalogue.",
        examples=[["tools", "vision", "structured_output"]],
    )


class ModelCatalogue(BaseModel):
    catalogue_version: str = Field(examples=["2026-11-25"])
    models: list[ModelOut]
    providers: list[str] = Field(
        description="Configured providers; any of them also takes `provider/model` names."
    )


@router.get("/", summary="List the models you can call", responses=problem_responses(401))
async def list_models(_: CurrentUser, services: ServicesDep) -> ModelCatalogue:
    """Catalogue models whose provider is configured on this server, with prices."""
    return ModelCatalogue(
        catalogue_version=services.models.catalogue.version,
        models=[
            ModelOut(
                name=e.name,
                aliases=list(e.aliases),
                provider=e.provider,
                upstream_model=e.upstream_model,
                input_price=e.input,
                output_price=e.output,
                cached_input_price=e.cached_input,
                context_window=e.context_window,
                max_output_tokens=e.max_output_tokens,
                fallbacks=list(e.fallbacks),
                capabilities=list(e.capabilities) if e.capabilities is not None else None,
            )
            for e in services.models.available()
        ],
        providers=sorted(services.models.providers),
    )
