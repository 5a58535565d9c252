"""How an embedding request (`POST /v1/embeddings`) is stored as a prompt: written by the
intake (app/services/intake.py), read back by the executor that runs it (even a runner in
another process, after its first one was lost), and shown by `GET /ai/prompts/`.

- `prompt_type` is `embedding`;
- `prompt_text` is the inputs joined with a line feed: the whole input, readable in
  `/ai/prompts`, and bounded by `MAX_PROMPT_CHARS` as a chat's messages are;
- `parameters` has `operation: "embeddings"` (how the executor tells it from a chat), `model`,
  `input_count`, `input_lengths` (each input's length in characters, so the inputs are split
  back exactly whatever line feeds they hold, and nothing is stored twice), `encoding_format`
  as the client asked, and `dimensions` and `user` when given;
- the response's `response_text` is a summary ("3 embeddings of 1536 dimensions"), never the
  vectors, which go to the client only; its `output_tokens` are 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EMBEDDING_PROMPT_TYPE = "embedding"
OPERATION = "embeddings"
_SEPARATOR = "\n"


def is_embedding(parameters: Mapping[str, Any]) -> bool:
    return parameters.get("operation") == OPERATION


def stored_text(inputs: Sequence[str]) -> str:
    """The prompt text of these inputs."""
    return _SEPARATOR.join(inputs)


def embedding_parameters(
    *,
    model: str,
    inputs: Sequence[str],
    encoding_format: str,
    dimensions: int | None,
    user: str | None,
) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "operation": OPERATION,
        "model": model,
        "input_count": len(inputs),
        "input_lengths": [len(text) for text in inputs],
        "encoding_format": encoding_format,
    }
    if dimensions is not None:
        parameters["dimensions"] = dimensions
    if user is not None:
        parameters["user"] = user
    return parameters


def inputs_of(prompt_text: str, parameters: Mapping[str, Any]) -> tuple[str, ...]:
    """The inputs a prompt stored with `stored_text` and `embedding_parameters`."""
    lengths: list[int] = parameters.get("input_lengths") or [len(prompt_text)]
    if sum(lengths) + len(lengths) - 1 != len(prompt_text):
        raise ValueError("the stored input lengths do not add up to the prompt's text")
    inputs, start = [], 0
    for length in lengths:
        inputs.append(prompt_text[start : start + length])
        start += length + len(_SEPARATOR)
    return tuple(inputs)


def summary(count: int, dimensions: int) -> str:
    """The response text of an embedding prompt."""
    noun = "embedding" if count == 1 else "embeddings"
    return f"{count} {noun} of {dimensions} dimensions"
