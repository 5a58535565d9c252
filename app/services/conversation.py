"""OpenAI's conversation shapes (messages, tools, response formats), as both `POST
/v1/chat/completions` and `POST /ai/prompts/` take them, and their translation into the
gateway's own (app/providers/base.py `Message`; the options of app/providers/fidelity.py):
checked once here, whichever endpoint received them.

The models tolerate fields they do not declare (`Tolerant`, see app/services/chat/schemas.py
for why); `check_extras` holds those fields' text to the same rule as the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Discriminator, Field, JsonValue, Tag

from app.kit.errors import InvalidInput
from app.kit.fields import StrictBool, Text
from app.kit.jsonschemas import check_schema
from app.kit.text import check_json_text
from app.providers.base import ImageURL as ImageURLDict
from app.providers.base import Message, Part, ToolCall
from app.providers.images import InvalidImage, parse_data_url


class Tolerant(BaseModel):
    """A part of the request that tolerates fields it does not declare (see above). They are
    not used, but they are text the API accepted, so the same rule holds for them (`Text`):
    `ChatCompletionCreate` checks them all at once (one check per request, rather than a
    validator run for every message and part)."""

    model_config = ConfigDict(extra="allow")


class ImageURL(Tolerant):
    url: Text = Field(description="An https URL, or a `data:image/<type>;base64,...` URL.")
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(Tolerant):
    """A content part: `text`, or `image_url` (user turns). Other types (`input_audio`,
    `file`) are refused by name."""

    type: Text = Field(examples=["text", "image_url"])
    text: Text | None = None
    image_url: ImageURL | None = None


def _content_kind(value: Any) -> str:
    return "parts" if isinstance(value, list) else "text"


# A string or a list of parts, told apart by the value itself, so that a bad one is reported
# once, against its own form (not once per form it might have had).
Content = Annotated[
    Annotated[Text, Tag("text")] | Annotated[list[ContentPart], Tag("parts")],
    Discriminator(_content_kind),
]


class FunctionCallIn(Tolerant):
    name: Annotated[Text, Field(min_length=1, max_length=64)]
    arguments: Text = Field(description="The arguments as JSON text, as the model wrote them.")


class ToolCallIn(Tolerant):
    id: Annotated[Text, Field(min_length=1, max_length=200)]
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(Tolerant):
    """One turn. `developer` is taken as `system`; a `tool` turn answers an assistant's tool
    call (`tool_call_id`); the legacy `function` turn answers a `function_call`."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Content | None = Field(
        None,
        description='A string, or a list of parts: `{"type": "text", "text": ...}`, and in '
        'user turns `{"type": "image_url", "image_url": {"url": ...}}`. May be null in an '
        "assistant turn that calls tools.",
    )
    name: Text | None = Field(
        None, description="A `function` turn's function name; otherwise accepted and ignored."
    )
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=128)
    tool_call_id: Annotated[Text, Field(max_length=200)] | None = None
    function_call: FunctionCallIn | None = Field(
        None, description="The legacy form of one tool call, in an assistant turn."
    )
    refusal: Text | None = None


class FunctionDefinition(Tolerant):
    name: Annotated[Text, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: Text | None = None
    parameters: dict[str, JsonValue] | None = Field(
        None, description="A JSON Schema of the arguments (an object schema)."
    )
    strict: StrictBool | None = None


class Tool(Tolerant):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Tolerant):
    name: Text


class NamedToolChoice(Tolerant):
    type: Literal["function"]
    function: NamedFunction

    @classmethod
    def for_function(cls, name: str) -> NamedToolChoice:
        return cls(type="function", function=NamedFunction(name=name))


class JSONSchemaFormat(Tolerant):
    name: Annotated[Text, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: Text | None = None
    schema_: dict[str, JsonValue] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(Tolerant):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


def check_free_json(
    tools: Sequence[Tool | FunctionDefinition] | None, response_format: ResponseFormat | None
) -> None:
    """The text of the free-form JSON values (tool parameters, a response format's schema),
    keys included, held to the same rule as every string (`Text`). Call from a validator: the
    failure is a validation error."""
    for tool in tools or ():
        function = tool.function if isinstance(tool, Tool) else tool
        if function.parameters:
            check_json_text(function.parameters)
    spec = response_format.json_schema if response_format is not None else None
    if spec is not None and spec.schema_:
        check_json_text(spec.schema_)


def check_extras(messages: Sequence[ChatMessage]) -> None:
    """The undeclared fields' text, in the messages and their parts (one check per request,
    rather than a validator run for every message and part)."""
    for message in messages:
        if message.__pydantic_extra__:
            check_json_text(message.__pydantic_extra__)
        if message.content.__class__ is list:
            for part in message.content:
                if part.__pydantic_extra__:
                    check_json_text(part.__pydantic_extra__)


def unsupported(name: str, message: str) -> NoReturn:
    raise InvalidInput(message, code="unsupported_parameter", extra={"parameter": name})


def invalid(parameter: str, message: str, code: str = "invalid_messages") -> NoReturn:
    raise InvalidInput(message, code=code, extra={"parameter": parameter})


def last_user(messages: Sequence[Message]) -> int:
    """The index of the last user turn (the prompt's text); a 400 when there is none."""
    for index in reversed(range(len(messages))):
        if messages[index]["role"] == "user":
            return index
    invalid("messages", "messages must contain at least one user message.")


def tool_options(
    tools: Sequence[Tool | FunctionDefinition] | None,
    choice: Literal["none", "auto", "required"] | NamedToolChoice | None,
    parallel_tool_calls: bool | None,
    *,
    where: str = "tools",
) -> dict[str, Any]:
    """`tools`, `tool_choice` and `parallel_tool_calls` as the options of the translation
    matrix, checked: each tool's parameters a JSON Schema, names distinct, a named choice
    among the tools. Defaults (`auto`, parallel calls) are left out: they ask for nothing."""
    options: dict[str, Any] = {}
    if tools:
        options["tools"] = [
            _tool(i, t.function if isinstance(t, Tool) else t, where=where)
            for i, t in enumerate(tools)
        ]
    names = {t["function"]["name"] for t in options.get("tools", [])}
    if len(names) < len(options.get("tools", [])):
        invalid(where, "Two tools have the same name.", "invalid_tools")
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in names:
            invalid(
                "tool_choice",
                f"tool_choice names the function '{name}', which is not among the tools.",
                "invalid_tool_choice",
            )
        options["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif choice == "required":
        if not names:
            invalid("tool_choice", "tool_choice 'required' needs tools.", "invalid_tool_choice")
        options["tool_choice"] = "required"
    elif choice == "none" and names:
        options["tool_choice"] = "none"
    if parallel_tool_calls is False and names:
        options["parallel_tool_calls"] = False
    return options


def _tool(index: int, function: FunctionDefinition, *, where: str) -> dict[str, Any]:
    definition: dict[str, Any] = {"name": function.name}
    if function.description is not None:
        definition["description"] = function.description
    if function.parameters is not None:
        check_schema(function.parameters, parameter=f"{where}[{index}].function.parameters")
        definition["parameters"] = function.parameters
    if function.strict is not None:
        definition["strict"] = function.strict
    return {"type": "function", "function": definition}


def response_format_option(requested: ResponseFormat) -> dict[str, Any]:
    """`response_format` as an option of the matrix (none for `text`), its schema checked."""
    if requested.type == "text":
        return {}
    if requested.type == "json_object":
        return {"response_format": {"type": "json_object"}}
    spec = requested.json_schema
    if spec is None or spec.schema_ is None:
        invalid(
            "response_format.json_schema",
            "response_format json_schema needs json_schema.name and json_schema.schema.",
            "invalid_response_format",
        )
    check_schema(spec.schema_, parameter="response_format.json_schema.schema")
    out: dict[str, Any] = {"name": spec.name, "schema": spec.schema_}
    if spec.description is not None:
        out["description"] = spec.description
    if spec.strict is not None:
        out["strict"] = spec.strict
    return {"response_format": {"type": "json_schema", "json_schema": out}}


def conversation(messages: list[ChatMessage]) -> list[Message]:
    """The messages in the gateway's shape: `developer` as `system`, text parts of non-user
    turns joined, images checked, legacy function turns as tool turns; every tool turn must
    answer a call an earlier assistant turn made."""
    out: list[Message] = []
    calls: dict[str, str] = {}  # tool call id → function name, of the calls made so far
    legacy: dict[str, list[str]] = {}  # function name → ids of its unanswered legacy calls
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.role
        if role in ("system", "developer"):
            out.append({"role": "system", "content": _text_only(where, message)})
        elif role == "user":
            out.append({"role": "user", "content": _user_content(where, message)})
        elif role == "assistant":
            turn: Message = {"role": "assistant", "content": None}
            if message.content is not None:
                turn["content"] = _text_only(where, message)
            tool_calls: list[ToolCall] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
                for call in message.tool_calls or []
            ]
            if message.function_call is not None:
                legacy_id = f"call_fn_{index}"
                legacy.setdefault(message.function_call.name, []).append(legacy_id)
                tool_calls.append(
                    {
                        "id": legacy_id,
                        "type": "function",
                        "function": {
                            "name": message.function_call.name,
                            "arguments": message.function_call.arguments,
                        },
                    }
                )
            if tool_calls:
                turn["tool_calls"] = tool_calls
                calls.update({c["id"]: c["function"]["name"] for c in tool_calls})
            elif message.content is None:
                invalid(f"{where}.content", f"{where}.content is missing.")
            out.append(turn)
        elif role == "tool":
            call_id = message.tool_call_id
            if call_id is None or call_id not in calls:
                invalid(
                    f"{where}.tool_call_id",
                    f"{where} is a tool result for "
                    + (f"the call '{call_id}'" if call_id else "no call (tool_call_id is missing)")
                    + ", which no earlier assistant turn made.",
                    "invalid_tool_message",
                )
            out.append(
                {"role": "tool", "tool_call_id": call_id, "content": _text_only(where, message)}
            )
        else:  # the legacy `function` turn
            pending = legacy.get(message.name or "")
            if not pending:
                invalid(
                    f"{where}.name",
                    f"{where} is a function result for '{message.name}', which no earlier "
                    "assistant turn called.",
                    "invalid_tool_message",
                )
            answered = pending.pop(0)
            out.append(
                {"role": "tool", "tool_call_id": answered, "content": _text_only(where, message)}
            )
    return out


def _text_only(where: str, message: ChatMessage) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            unsupported(
                f"{where}.content[{j}].type",
                f"{where}: a {message.role} turn takes text parts only, not '{part.type}'.",
            )
        texts.append(part.text)
    return "\n".join(texts)


def _user_content(where: str, message: ChatMessage) -> str | list[Part]:
    content = message.content
    if content is None:
        invalid(f"{where}.content", f"{where}.content is missing.")
    if isinstance(content, str):
        return content
    parts: list[Part] = []
    for j, part in enumerate(content):
        if part.type == "text" and part.text is not None:
            parts.append({"type": "text", "text": part.text})
        elif part.type == "image_url" and part.image_url is not None:
            url = part.image_url.url
            parameter = f"{where}.content[{j}].image_url.url"
            if url.startswith("data:"):
                try:
                    parse_data_url(url)
                except InvalidImage as exc:
                    invalid(parameter, f"{parameter}: {exc}", "invalid_image")
            elif not url.startswith("https://"):
                invalid(parameter, f"{parameter} must be an https or a data: URL.", "invalid_image")
            image: ImageURLDict = {"url": url}
            if part.image_url.detail is not None:
                image["detail"] = part.image_url.detail
            parts.append({"type": "image_url", "image_url": image})
        else:
            unsupported(
                f"{where}.content[{j}].type",
                f"{where}: content parts of type '{part.type}' are not supported (text and "
                "image_url are).",
            )
    if not parts:
        invalid(f"{where}.content", f"{where}.content is empty.")
    if all(part["type"] == "text" for part in parts):  # text alone stays a string
        return "\n".join(part["text"] for part in parts)  # type: ignore[typeddict-item]
    return parts
