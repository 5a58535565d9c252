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
    than MAX_SCHEMA_BYTES, or refers to another document."""
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError):
        size = MAX_SCHEMA_BYTES + 1
    if size > MAX_SCHEMA_BYTES:
        raise InvalidInput(
            f"{parameter} is larger than {MAX_SCHEMA_BYTES:,} bytes of JSON.",
            code="invalid_json_schema",
            extra={"parameter": parameter},
        )
    if not isinstance(schema, dict):
        raise InvalidInput(
            f"{parameter} must be a JSON Schema object.",
            code="invalid_json_schema",
            extra={"parameter": parameter},
        )
    try:
        jsonschema_rs.meta.validate(schema)
        _validator(json.dumps(schema, sort_keys=True))
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        first = str(exc).split("\n", 1)[0][:300]
        raise InvalidInput(
            f"{parameter} is not a valid JSON Schema: {first}",
            code="invalid_json_schema",
            extra={"parameter": parameter},
        ) from None


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
