"""The translation matrix: what each provider makes of each chat-completions field.

The gateway speaks OpenAI's Chat Completions; every other provider is reached by translation.
This module is the one source of truth for it: for each request field (and the two message
features, image parts and tool turns), per provider kind, whether it is

- `forwarded`: sent as it is (OpenAI, and OpenAI-compatible servers such as Ollama or vLLM);
- `translated`: sent as the vendor's own equivalent, named in the cell;
- `recorded`: kept on the prompt but not sent, for a field that does not change the answer
  and has no equivalent (an end user's id);
- `refused`: a 400 `unsupported_parameter` naming the field and the provider, before anything
  is recorded or called (or, with `drop_params`, left out and named in the response).

The intake checks every request against it (`refused_fields`), the adapters implement exactly
the `translated` cells, the README's table is rendered from it (`render_markdown`), and
tests/openai_compat/test_fidelity.py has a test for every cell.

A field at its default (`top_p` 1, `stop` empty, `parallel_tool_calls` true, …) asks for
nothing: it is never refused and never sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.providers.base import Message

Kind = Literal["openai", "gemini", "anthropic", "local"]
KINDS: tuple[Kind, ...] = ("openai", "gemini", "anthropic", "local")
How = Literal["forwarded", "translated", "recorded", "refused"]

# Message features, checked like fields (they are not top-level fields of the request).
IMAGES = "messages[].content[].image_url"
TOOL_TURNS = "messages[].tool_calls / role tool"


@dataclass(frozen=True, slots=True)
class Cell:
    how: How
    to: str = ""  # translated: what it becomes; refused or recorded: why


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    cells: Mapping[Kind, Cell]
    # The value that asks for nothing (the field's default); None: any value asks for something.
    default: Callable[[Any], bool] | None = None
    capability: str | None = None  # the catalogue capability a model needs for it

    def is_default(self, value: Any) -> bool:
        return value is None or (self.default is not None and self.default(value))


def _fwd() -> Cell:
    return Cell("forwarded")


def _to(what: str) -> Cell:
    return Cell("translated", what)


def _no(why: str) -> Cell:
    return Cell("refused", why)


_NO_SAMPLING = "Anthropic's API version 2026-10-21 has no sampling parameters"
_NO_TOOLS_TEMPLATE = "the bundled model's chat template has no tools"


def _equals(default: Any) -> Callable[[Any], bool]:
    return lambda value: value == default


def _empty(value: Any) -> bool:
    return not value


ROWS: tuple[Row, ...] = (
    Row(
        "tools",
        {
            "openai": _fwd(),
            "gemini": _to("tools[].functionDeclarations (parameters → parametersJsonSchema)"),
            "anthropic": _to("tools[] (parameters → input_schema; strict)"),
            "local": _no(_NO_TOOLS_TEMPLATE),
        },
        _empty,
        "tools",
    ),
    Row(
        "tool_choice",
        {
            "openai": _fwd(),
            "gemini": _to(
                "toolConfig.functionCallingConfig (AUTO, ANY, NONE; allowedFunctionNames)"
            ),
            "anthropic": _to("tool_choice (auto, any, tool, none)"),
            "local": _no(_NO_TOOLS_TEMPLATE),
        },
        _equals("auto"),
        "tools",
    ),
    Row(
        "parallel_tool_calls",
        {
            "openai": _fwd(),
            "gemini": _no("Gemini cannot be limited to one function call per turn"),
            "anthropic": _to("tool_choice.disable_parallel_tool_use"),
            "local": _no(_NO_TOOLS_TEMPLATE),
        },
        _equals(True),
        "tools",
    ),
    Row(
        TOOL_TURNS,
        {
            "openai": _fwd(),
            "gemini": _to("functionCall and functionResponse parts"),
            "anthropic": _to("tool_use and tool_result blocks"),
            "local": _no(_NO_TOOLS_TEMPLATE),
        },
        None,
        "tools",
    ),
    Row(
        "response_format",
        {
            "openai": _fwd(),
            "gemini": _to(
                "generationConfig.responseMimeType application/json (+ responseJsonSchema)"
            ),
            "anthropic": _to(
                "output_config.format where the model has it, else a forced tool "
                "(json_schema; json_object: any object)"
            ),
            "local": _fwd(),  # llama.cpp's server turns the schema into a grammar
        },
        _equals({"type": "text"}),
        "structured_output",
    ),
    Row(
        "stop",
        {
            "openai": _fwd(),
            "gemini": _to("generationConfig.stopSequences"),
            "anthropic": _to("stop_sequences"),
            "local": _fwd(),
        },
        _empty,
    ),
    Row(
        "top_p",
        {
            "openai": _fwd(),
            "gemini": _to("generationConfig.topP"),
            "anthropic": _no(_NO_SAMPLING),
            "local": _fwd(),
        },
        _equals(1),
    ),
    Row(
        "seed",
        {
            "openai": _fwd(),
            "gemini": _to("generationConfig.seed"),
            "anthropic": _no("Anthropic has no seed"),
            "local": _fwd(),
        },
    ),
    Row(
        "frequency_penalty",
        {
            "openai": _fwd(),
            "gemini": _to("generationConfig.frequencyPenalty"),
            "anthropic": _no(_NO_SAMPLING),
            "local": _fwd(),
        },
        _equals(0),
    ),
    Row(
        "presence_penalty",
        {
            "openai": _fwd(),
            "gemini": _to("generationConfig.presencePenalty"),
            "anthropic": _no(_NO_SAMPLING),
            "local": _fwd(),
        },
        _equals(0),
    ),
    Row(
        "logprobs",
        {
            "openai": _fwd(),
            "gemini": _to("generationConfig.responseLogprobs (logprobsResult → logprobs.content)"),
            "anthropic": _no("Anthropic gives no log probabilities"),
            "local": _fwd(),
        },
        _equals(False),
    ),
    Row(
        "top_logprobs",
        {
            "openai": _fwd(),
            "gemini": _to("generationConfig.logprobs (topCandidates → top_logprobs)"),
            "anthropic": _no("Anthropic gives no log probabilities"),
            "local": _fwd(),
        },
        _equals(0),
    ),
    Row(
        "logit_bias",
        {
            "openai": _fwd(),
            "gemini": _no("Gemini has no logit bias"),
            "anthropic": _no("Anthropic has no logit bias"),
            "local": _fwd(),
        },
        _empty,
    ),
    Row(
        "reasoning_effort",
        {
            "openai": _fwd(),
            "gemini": _to("generationConfig.thinkingConfig.thinkingBudget"),
            "anthropic": _to("thinking (enabled, budget_tokens)"),
            "local": _no("the bundled model does not reason"),
        },
        None,
        "reasoning",
    ),
    Row(
        IMAGES,
        {
            "openai": _fwd(),
            "gemini": _to("inlineData parts (an https image is fetched, bounded and guarded)"),
            "anthropic": _to("image blocks (base64 or url source)"),
            "local": _no("the bundled model has no vision"),
        },
        None,
        "vision",
    ),
    Row(
        "n",
        {
            "openai": _fwd(),
            "gemini": _to("generationConfig.candidateCount"),
            "anthropic": _no("Anthropic answers once per request"),
            "local": _no("llama.cpp's server answers once per request"),
        },
        _equals(1),
    ),
    Row(
        "user",
        {
            "openai": _fwd(),
            "gemini": Cell("recorded", "stored as parameters.user; Gemini has no such field"),
            "anthropic": _to("metadata.user_id"),
            "local": Cell("recorded", "stored as parameters.user"),
        },
    ),
)

BY_NAME: dict[str, Row] = {row.name: row for row in ROWS}
# The request fields of the matrix (the message features are found in the messages).
OPTION_FIELDS: tuple[str, ...] = tuple(r.name for r in ROWS if r.name not in (IMAGES, TOOL_TURNS))


def used(options: Mapping[str, Any], messages: Iterable[Message]) -> list[str]:
    """The matrix rows a request uses: its options that ask for something, and the message
    features its conversation has. (Written to allocate nothing for a plain request: every
    object made on the request path costs it a share of the garbage collector's passes.)"""
    images = turns = False
    for message in messages:
        content = message["content"]
        if content.__class__ is list and not images:
            for part in content:
                if part["type"] == "image_url":
                    images = True
        if not turns and (message["role"] == "tool" or "tool_calls" in message):
            turns = True
    if not options and not images and not turns:
        return _NONE
    names = [name for name, value in options.items() if not BY_NAME[name].is_default(value)]
    if images:
        names.append(IMAGES)
    if turns:
        names.append(TOOL_TURNS)
    return names


_NONE: list[str] = []  # (never changed)


def refused_fields(kind: str, names: Iterable[str]) -> list[str]:
    """Of the rows `names`, those the provider kind refuses."""
    return [name for name in names if BY_NAME[name].cells[_kind(kind)].how == "refused"]


def sent_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options an adapter of `kind` receives: those that ask for something, less the
    refused (dropped with `drop_params`) and the recorded-only."""
    cells = {name: BY_NAME[name].cells[_kind(kind)] for name in options}
    return {
        name: value
        for name, value in options.items()
        if not BY_NAME[name].is_default(value) and cells[name].how in ("forwarded", "translated")
    }


def why(kind: str, name: str) -> str:
    return BY_NAME[name].cells[_kind(kind)].to


def _kind(kind: str) -> Kind:
    for known in KINDS:
        if kind == known:
            return known
    return "openai"


def counts() -> dict[Kind, dict[How, int]]:
    """Cells per provider kind and verdict (the figures the README gives)."""
    table: dict[Kind, dict[How, int]] = {k: {} for k in KINDS}
    for row in ROWS:
        for kind in KINDS:
            how = row.cells[kind].how
            table[kind][how] = table[kind].get(how, 0) + 1
    return table


_LABELS: dict[Kind, str] = {
    "openai": "OpenAI and compatible",
    "gemini": "Gemini",
    "anthropic": "Anthropic",
    "local": "local (llama.cpp)",
}


def render_markdown() -> str:
    """The matrix as the README's table (tests/test_docs.py keeps the README equal to it)."""
    lines = [
        "| Field | " + " | ".join(_LABELS[k] for k in KINDS) + " |",
        "|---|" + "---|" * len(KINDS),
    ]
    for row in ROWS:
        cells = []
        for kind in KINDS:
            cell = row.cells[kind]
            cells.append(cell.how if not cell.to else f"{cell.how}: {cell.to}")
        lines.append(f"| `{row.name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
