"""The simulator's tool calls, JSON answers, logprobs and embeddings: pure and deterministic.

Tests across processes and wire formats assert on these exact values, so each is a pure
function of the request, like the generated text (`models.token_pieces`):
- A tool is called when tools are offered, the last message is the user's (not a tool
  result: that turn gets a text answer, which ends a tool loop) and it names the tool, or
  when `tool_choice` forces one. Arguments are built from the tool's JSON schema.
- JSON modes answer a value that matches the schema (`json_object`: `{"answer": text}`).
- Embeddings are unit vectors derived from (model, text), `dimensions` long.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from tools.simulator.models import token_pieces

DEFAULT_DIMENSIONS = 16


@dataclass(frozen=True, slots=True)
class SimToolCall:
    """A call the simulated model makes; `index` is its position in the answer."""

    index: int
    name: str
    arguments: str  # JSON object text, compact

    @property
    def call_id(self) -> str:
        digest = hashlib.blake2b(
            f"{self.index}:{self.name}:{self.arguments}".encode(), digest_size=8
        )
        return f"call_{digest.hexdigest()}"

    @property
    def arguments_object(self) -> Any:
        return json.loads(self.arguments)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    parameters: dict[str, Any]


def parse_tools(raw: Any) -> tuple[ToolSpec, ...] | str:
    """OpenAI/Ollama `tools` (the same shape in both); a string says what is wrong."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        return "tools must be an array"
    specs: list[ToolSpec] = []
    for tool in raw:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return "each tool needs function.name"
        parameters = function.get("parameters")
        specs.append(ToolSpec(function["name"], parameters if isinstance(parameters, dict) else {}))
    return tuple(specs)


def choose_tool_calls(
    tools: tuple[ToolSpec, ...],
    *,
    model: str,
    last_user_text: str,
    users_turn: bool,
    forced: str | None = None,
) -> tuple[SimToolCall, ...]:
    """The calls the model makes: the forced tool, else each tool the user names."""
    if not tools or not users_turn:
        return ()
    if forced is not None:
        chosen = [tool for tool in tools if tool.name == forced or forced == "*"][:1]
    else:
        words = set(re.findall(r"[\w.\-]+", last_user_text.lower()))
        chosen = [tool for tool in tools if tool.name.lower() in words]
    return tuple(
        SimToolCall(
            index,
            tool.name,
            compact(value_for(tool.parameters, f"{model}\x00{tool.name}\x00{last_user_text}")),
        )
        for index, tool in enumerate(chosen)
    )


def value_for(schema: dict[str, Any], seed: str) -> Any:
    """A value that matches a (simple) JSON schema, derived from `seed`."""
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and isinstance(options[0], dict):
            return value_for(options[0], seed)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {
            name: value_for(sub if isinstance(sub, dict) else {}, f"{seed}.{name}")
            for name, sub in properties.items()
        }
    if kind == "array":
        raw_items = schema.get("items")
        items: dict[str, Any] = raw_items if isinstance(raw_items, dict) else {}
        count = max(1, int(schema.get("minItems") or 1))
        return [value_for(items, f"{seed}[{i}]") for i in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 0)) + _number(seed) % 10
    if kind == "number":
        return float(schema.get("minimum", 0)) + (_number(seed) % 100) / 4
    if kind == "boolean":
        return _number(seed) % 2 == 0
    if kind == "null":
        return None
    return token_pieces("schema", seed, 1)[0]


def json_answer(schema: dict[str, Any] | None, *, model: str, prompt_text: str) -> str:
    """The answer in a JSON mode: matching `schema`, or `{"answer": ...}` for any JSON."""
    if schema is None:
        return compact({"answer": "".join(token_pieces(model, prompt_text, 3))})
    return compact(value_for(schema, f"{model}\x00{prompt_text}"))


def json_pieces(text: str) -> tuple[str, ...]:
    """A JSON answer cut into stream pieces after each comma (joined back, it parses)."""
    parts = text.split(",")
    return tuple(part + ("," if i < len(parts) - 1 else "") for i, part in enumerate(parts))


def argument_pieces(arguments: str) -> tuple[str, ...]:
    """Tool-call arguments streamed in two halves, as servers split them mid-token."""
    middle = len(arguments) // 2
    return tuple(piece for piece in (arguments[:middle], arguments[middle:]) if piece)


def logprob_entry(token: str) -> dict[str, Any]:
    """OpenAI's ChatCompletionTokenLogprob for a generated piece (Ollama's is the same)."""
    logprob = -(_number(token) % 1000) / 1000
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [],
    }


def embedding(model: str, text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """A unit vector for (model, text): the same input always embeds the same."""
    seed = hashlib.blake2b(f"{model}\x00{text}".encode(), digest_size=16).digest()
    raw = [
        int.from_bytes(hashlib.blake2b(seed + i.to_bytes(4, "little"), digest_size=4).digest())
        / 2**31
        - 1.0
        for i in range(dimensions)
    ]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _number(seed: str) -> int:
    return int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=4).digest(), "little")
