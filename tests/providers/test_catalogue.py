"""The model catalogue: the bundled file, a user's override, and clear errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from app.providers.catalogue import (
    BUNDLED_CATALOGUE,
    CatalogueError,
    ModelEntry,
    load_catalogue,
    structured_output_by_tool,
)


def test_bundled_catalogue_prices_and_aliases():
    catalogue = load_catalogue()
    assert catalogue.version
    mini = catalogue.get("gpt-4o-mini")
    assert mini is not None and mini.provider == "openai"
    assert mini.input == Decimal("0.15") and mini.output == Decimal("0.60")
    assert catalogue.get("sonnet") is catalogue.get("claude-sonnet-4-6")
    assert catalogue.get("smollm2") is catalogue.get("local")
    assert {e.provider for e in catalogue.entries} >= {"openai", "gemini", "anthropic", "local"}
    price = catalogue.price(mini)
    assert price is not None and price.version == catalogue.version
    # 1,000 input tokens of which 400 cached, 100 output tokens:
    assert (
        price.cost(1000, 100, 400)
        == (Decimal("0.15") * 600 + Decimal("0.075") * 400 + Decimal("0.60") * 100) / 10**6
    )


def test_a_users_file_replaces_and_adds_models(tmp_path: Path):
    mine = tmp_path / "models.toml"
    mine.write_text(
        'version = "acme-7"\n'
        "[[models]]\n"
        'name = "gpt-4o-mini"\nprovider = "openai"\nupstream_model = "gpt-4o-mini"\n'
        'input = "0.10"\noutput = "0.50"\n'
        "[[models]]\n"
        'name = "house-llama"\naliases = ["llama"]\nprovider = "ollama"\n'
        'upstream_model = "llama3.2"\ninput = "0"\noutput = "0"\nfallbacks = ["gpt-4o-mini"]\n'
    )
    catalogue = load_catalogue(mine)
    assert catalogue.version == "acme-7"
    mini = catalogue.get("gpt-4o-mini")
    assert mini is not None and mini.input == Decimal("0.10")
    llama = catalogue.get("llama")
    assert llama is not None and llama.fallbacks == ("gpt-4o-mini",)
    assert catalogue.get("gpt-4o") is not None  # the rest of the bundled catalogue stays


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = [", "cannot read"),
        ('version = "x"\n[[models]]\nname = "m"\nprovider = "openai"\n', "upstream_model"),
        (
            'version = "x"\n[[models]]\nname = "m"\nprovider = "p"\nupstream_model = "u"\n'
            'input = "-1"\noutput = "0"\n',
            "input",
        ),
        (
            'version = "x"\n[[models]]\nname = "gpt-4o-mini"\naliases = ["gpt-4o"]\n'
            'provider = "p"\nupstream_model = "u"\ninput = "0"\noutput = "0"\n',
            "'gpt-4o' names both",
        ),
    ],
)
def test_an_invalid_file_is_refused_with_a_clear_message(tmp_path: Path, text: str, message: str):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(bad)


def test_the_bundled_file_is_shipped_next_to_the_code():
    assert BUNDLED_CATALOGUE.is_file() and BUNDLED_CATALOGUE.suffix == ".toml"


def test_which_anthropic_models_get_structured_output_by_forced_tool():
    """Every bundled Anthropic model gives structured output; those whose capabilities leave
    out `native_structured_output` get it through a forced tool. A model whose capabilities
    are not stated (or one outside the catalogue) is taken to have the native kind."""
    catalogue = load_catalogue()
    anthropic = [e for e in catalogue.entries if e.provider == "anthropic"]
    assert all(e.capabilities and "structured_output" in e.capabilities for e in anthropic)
    by_tool = {e.name for e in anthropic if structured_output_by_tool(e)}
    assert by_tool == {"claude-3-5-haiku"}
    assert not structured_output_by_tool(catalogue.get("sonnet"))
    unstated = ModelEntry(
        name="mine", provider="anthropic", upstream_model="m", input=Decimal(0), output=Decimal(0)
    )
    assert not structured_output_by_tool(unstated) and not structured_output_by_tool(None)
