"""The OpenAI features a job may ask for, in OpenAI's own shapes (DESIGN §3).

Tools, tool calls (whole and as stream deltas) and `response_format` are carried exactly
as OpenAI's Chat Completions API defines them (openai-openapi `ChatCompletionTool`,
`ChatCompletionMessageToolCall`, `ChatCompletionMessageToolCallChunk`,
`ResponseFormatJsonSchema`), so the router can pass an OpenAI request through and the
OpenAI-compatible adapter can forward it unchanged. Only the Ollama adapter translates.

Unlike the rest of the contract these models are strict about what they need (a tool
without a function name is a BAD_REQUEST naming the field) but still ignore unknown keys,
so a newer caller's extra field never breaks an older worker.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# How deeply a free-form JSON value of a job (a tool's parameters, a response schema,
# `extra`) may nest. Real schemas stay far below it; the wire encoder gives up at about
# 250 levels, so a deeper value would be accepted here and fail on its way to a node.
MAX_JSON_DEPTH = 128


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests objects and arrays more than `limit` levels deep (iterative:
    a value too deep for recursion is still measured)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _shallow(value: Any) -> Any:
    if json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


# A free-form JSON object of a job, refused (naming the field) when nested too deep.
JsonObject = Annotated[dict[str, Any], AfterValidator(_shallow)]

# OpenAI's limit for function names: `^[a-zA-Z0-9_-]{1,64}$`; local runtimes take dots too.
_FUNCTION_NAME = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionDefinition(_Shape):
    name: Annotated[str, _FUNCTION_NAME]
    description: str | None = None
    parameters: JsonObject | None = None
    strict: bool | None = None


class Tool(_Shape):
    """A tool the model may call; OpenAI knows only `function` tools in Chat Completions."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionCall(_Shape):
    name: str
    arguments: str = "{}"  # a JSON object as a string, as OpenAI sends it


class ToolCall(_Shape):
    """A call the model made (an assistant message's `tool_calls`, an answer's)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    def arguments_object(self) -> dict[str, Any]:
        """The arguments as an object; raises ValueError when they are not a JSON object."""
        parsed = json.loads(self.function.arguments or "{}")
        if not isinstance(parsed, dict):
            raise ValueError("tool call arguments must be a JSON object")
        return parsed


class FunctionCallDelta(_Shape):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Shape):
    """A piece of a tool call in a stream; `index` says which call it belongs to."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta = Field(default_factory=FunctionCallDelta)

    @classmethod
    def whole(cls, index: int, call: ToolCall) -> ToolCallDelta:
        """A whole call as one delta (a replayed or non-streaming answer sent as a stream)."""
        name, arguments = call.function.name, call.function.arguments
        return cls(
            index=index,
            id=call.id,
            type="function",
            function=FunctionCallDelta(name=name, arguments=arguments),
        )


class NamedFunction(_Shape):
    name: Annotated[str, _FUNCTION_NAME]


class NamedToolChoice(_Shape):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class JsonSchemaSpec(_Shape):
    name: str = "response"
    description: str | None = None
    # `schema` is a BaseModel attribute, so the field has another name in Python.
    json_schema: JsonObject = Field(alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)


class ResponseFormat(_Shape):
    """`text` (the default), `json_object` (any valid JSON) or `json_schema` (matching it)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        """A `json_schema` format names its schema, as OpenAI requires."""
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema: required when type is json_schema")
        return self

    @property
    def wants_json(self) -> bool:
        return self.type != "text"

    @property
    def schema_(self) -> dict[str, Any] | None:
        """The schema the answer must match, or None for any JSON (or text)."""
        if self.type == "json_schema" and self.json_schema is not None:
            return self.json_schema.json_schema
        return None


def stable_call_id(index: int, name: str, arguments: str) -> str:
    """A call id for runtimes that send none (Ollama): the same call gets the same id,
    so a replayed or retried answer names its calls the same way."""
    digest = hashlib.blake2b(f"{index}\x00{name}\x00{arguments}".encode(), digest_size=12)
    return f"call_{digest.hexdigest()}"


def canonical_arguments(arguments: Any) -> str:
    """An arguments object as OpenAI's JSON string (compact, keys in the model's order)."""
    return json.dumps(arguments if arguments is not None else {}, separators=(",", ":"))


class ToolCallAssembler:
    """Joins streamed tool-call deltas into whole calls, by `index`, as OpenAI clients do."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, deltas: list[ToolCallDelta]) -> None:
        for delta in deltas:
            call = self._calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            if delta.id:
                call["id"] = delta.id
            if delta.function.name:
                call["name"] += delta.function.name
            if delta.function.arguments:
                call["arguments"] += delta.function.arguments

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(
                id=call["id"] or stable_call_id(index, call["name"], call["arguments"]),
                function=FunctionCall(name=call["name"], arguments=call["arguments"] or "{}"),
            )
            for index, call in sorted(self._calls.items())
        ]
