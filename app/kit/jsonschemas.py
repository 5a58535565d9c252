"""JSON Schemas that users give (tool parameters, structured output): checked when a request
arrives, and used to validate a structured answer.

`jsonschema-rs` (Rust) does both. A schema may only refer to itself: a `$ref` to any other
document is refused rather than fetched, since its URL is the user's and fetching it would let
a request reach into the server's network (the same rule as app/kit/outbound.py, more simply
kept: nothing is fetched at all).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema_rs

from app.kit.errors import InvalidInput

MAX_SCHEMA_BYTES = 100_000


def _no_retrieval(uri: str) -> Any:
    raise ValueError(f"the schema refers to another document ({uri}), which is not fetched")


def check_schema(schema: Any, *, parameter: str) -> None:
    """Refuse (400 `invalid_json_schema`) a schema that is not a valid JSON Schema, is larger
    than MAX_SCHEMA_BYTES, or refers to another document. An agent sends the same tools with
    every call: a schema already judged is not judged again (`_judged`)."""
    if not isinstance(schema, dict):
        raise InvalidInput(
            f"{parameter} must be a JSON Schema object.",
            code="invalid_json_schema",
            extra={"parameter": parameter},
        )
    try:
        text = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):
        text = None
    problem = _judged(text) if text is not None and len(text) <= MAX_SCHEMA_BYTES else None
    if text is None or len(text) > MAX_SCHEMA_BYTES:
        problem = f"it is larger than {MAX_SCHEMA_BYTES:,} bytes of JSON"
    if problem is not None:
        raise InvalidInput(
            f"{parameter} is not a valid JSON Schema: {problem}",
            code="invalid_json_schema",
            extra={"parameter": parameter},
        )


@functools.lru_cache(maxsize=1024)
def _judged(schema_json: str) -> str | None:
    """What is wrong with a schema (its JSON, keys sorted), or None."""
    try:
        jsonschema_rs.meta.validate(json.loads(schema_json))
        _validator(schema_json)
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        return str(exc).split("\n", 1)[0][:300]
    return None


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(json.loads(schema_json), retriever=_no_retrieval)


def violation(schema: dict[str, Any], value: Any) -> str | None:
    """Why `value` does not satisfy `schema` (a schema `check_schema` accepted), or None."""
    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        return f"the schema cannot be used ({str(exc).splitlines()[0][:200]})"
    for error in validator.iter_errors(value):
        path = "/".join(str(p) for p in error.instance_path) or "(the whole answer)"
        return f"{error.message[:300]} at {path}"
    return None
