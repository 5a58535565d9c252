"""The versioned model catalogue: names and aliases → provider, upstream model, prices, limits.

The bundled `catalogue.toml` ships with the package; MODEL_CATALOGUE_PATH names a file of the
same shape whose models replace (same name) or add to the bundled ones. Every attempt records
the catalogue version its cost was computed with, so a price change never rewrites history.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BUNDLED_CATALOGUE = Path(__file__).with_name("catalogue.toml")
_MILLION = Decimal(1_000_000)


Capability = Literal[
    "tools", "vision", "structured_output", "native_structured_output", "reasoning", "embeddings"
]
CAPABILITIES: tuple[Capability, ...] = (
    "tools", "vision", "structured_output", "native_structured_output", "reasoning", "embeddings",
)  # fmt: skip


class CatalogueError(ValueError):
    """The catalogue file is unreadable or invalid (reported at start-up)."""


class ModelEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
    aliases: tuple[str, ...] = ()
    provider: str = Field(min_length=1, max_length=40)
    upstream_model: str = Field(min_length=1, max_length=200)
    input: Decimal = Field(ge=0, description="USD per million input tokens")
    output: Decimal = Field(ge=0, description="USD per million output tokens")
    cached_input: Decimal | None = Field(None, ge=0, description="USD per million cached tokens")
    context_window: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    timeout_seconds: float | None = Field(None, gt=0, le=3600)
    fallbacks: tuple[str, ...] = ()
    # What the model can do beyond text: a request that uses more is refused before anything
    # is recorded (app/services/intake.py). None: not stated, so only the provider's column of
    # the translation matrix (app/providers/fidelity.py) is checked.
    capabilities: tuple[Capability, ...] | None = None


def structured_output_by_tool(entry: ModelEntry | None) -> bool:
    """Whether the gateway gives structured output for this Anthropic model through a forced
    tool: its capabilities are stated and lack `native_structured_output` (the vendor's own
    `output_config.format`). A model whose capabilities are not stated, or one outside the
    catalogue (`anthropic/<name>`), is taken to have the native kind, as current models do.
    (Only the Anthropic adapter asks: the other vendors' structured output is native.)"""
    return (
        entry is not None
        and entry.capabilities is not None
        and "native_structured_output" not in entry.capabilities
    )


def embedding_model(entry: ModelEntry | None) -> bool:
    """Whether the entry is an embedding model: its capabilities list `embeddings`. Such a
    model serves POST /v1/embeddings and nothing else (a chat or a prompt naming it is
    refused); every other model is a chat model (None: a provider/model name outside the
    catalogue, which is whatever its caller uses it for)."""
    return (
        entry is not None and entry.capabilities is not None and "embeddings" in entry.capabilities
    )


class _CatalogueFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=32)
    models: list[ModelEntry]


@dataclass(frozen=True, slots=True)
class Price:
    """A price list in force, with the catalogue version it came from."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None
    version: str

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> Decimal:
        cached = min(cached_input_tokens, input_tokens) if self.cached_input is not None else 0
        cached_price = self.cached_input if self.cached_input is not None else self.input
        return (
            self.input * (input_tokens - cached)
            + cached_price * cached
            + self.output * output_tokens
        ) / _MILLION


class Catalogue:
    def __init__(self, version: str, entries: list[ModelEntry]) -> None:
        self.version = version
        self.entries = entries
        self._by_name: dict[str, ModelEntry] = {}
        for entry in entries:
            for key in (entry.name, *entry.aliases):
                if key in self._by_name and self._by_name[key].name != entry.name:
                    raise CatalogueError(
                        f"'{key}' names both {self._by_name[key].name} and {entry.name}"
                    )
                self._by_name[key] = entry
        self._by_upstream = {(e.provider, e.upstream_model): e for e in entries}

    def get(self, name: str) -> ModelEntry | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def for_upstream(self, provider: str, upstream_model: str) -> ModelEntry | None:
        return self._by_upstream.get((provider, upstream_model))

    def price(self, entry: ModelEntry | None) -> Price | None:
        if entry is None:
            return None
        return Price(entry.input, entry.output, entry.cached_input, self.version)


def _read(path: Path) -> _CatalogueFile:
    try:
        return _CatalogueFile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"cannot read the model catalogue {path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise CatalogueError(f"invalid model catalogue {path}: {problems}") from None


def load_catalogue(override: Path | None = None) -> Catalogue:
    bundled = _read(BUNDLED_CATALOGUE)
    if override is None:
        return Catalogue(bundled.version, bundled.models)
    mine = _read(override)
    replaced = {entry.name for entry in mine.models}
    entries = [e for e in bundled.models if e.name not in replaced] + mine.models
    return Catalogue(mine.version, entries)
