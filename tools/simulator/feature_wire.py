"""Tools, JSON modes and logprobs in each wire format the simulator speaks.

Parsing turns a body's fields into `GenRequest` keywords; rendering turns a `Plan`'s tool
calls into each format's shape. Ollama (api/types.go): `tools`, `format` ("json" or a
schema), `logprobs`/`top_logprobs`; answers `message.tool_calls[].function` with
`index`, `name` and `arguments` as an object, one whole call per stream chunk, and
`done_reason: stop`. OpenAI (openai-openapi): `tools`, `tool_choice`, `response_format`,
`logprobs`; answers `message.tool_calls[]` with `id` and `arguments` as a JSON string,
streamed as `delta.tool_calls[]` pieces by `index`, and `finish_reason: tool_calls`.
"""

from __future__ import annotations

from typing import Any

from tools.simulator.features import argument_pieces, parse_tools
from tools.simulator.models import SimModel
from tools.simulator.plan import Plan, Rejection


def _users_turn(messages: list[Any]) -> bool:
    last = messages[-1] if messages else None
    return isinstance(last, dict) and last.get("role") == "user"


def _prefill(messages: list[Any]) -> str:
    """A final assistant message's text: the answer so far, which the model continues."""
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "assistant" or last.get("tool_calls"):
        return ""
    content = last.get("content")
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        content = "".join(part for part in parts if isinstance(part, str))
    return content if isinstance(content, str) else ""


def _stops(value: Any) -> tuple[str, ...]:
    """`stop` as a string or a list of strings (both wire formats take either)."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return tuple(stop for stop in value if isinstance(stop, str) and stop)
    return ()


def ollama_fields(payload: dict[str, Any], messages: list[Any]) -> dict[str, Any] | Rejection:
    """GenRequest keywords from an `/api/chat` body's tools, format and logprobs."""
    tools = parse_tools(payload.get("tools"))
    if isinstance(tools, str):
        return Rejection("bad_request", tools)
    fmt = payload.get("format")
    if fmt not in (None, "", "json") and not isinstance(fmt, dict):
        return Rejection("bad_request", 'format must be "json" or a JSON schema')
    return {
        "tools": tools,
        "users_turn": _users_turn(messages),
        "prefill": _prefill(messages),
        "json_mode": bool(fmt),
        "json_schema": fmt if isinstance(fmt, dict) else None,
        "logprobs": payload.get("logprobs") is True,
        "stop": _stops((payload.get("options") or {}).get("stop")),
    }


def openai_fields(payload: dict[str, Any], messages: list[Any]) -> dict[str, Any] | Rejection:
    """GenRequest keywords from a `/v1/chat/completions` body."""
    tools = parse_tools(payload.get("tools"))
    if isinstance(tools, str):
        return Rejection("bad_request", tools)
    choice = payload.get("tool_choice")
    forced: str | None = None
    if choice == "none":
        tools = ()
    elif choice == "required":
        forced = "*"
    elif isinstance(choice, dict):
        forced = str((choice.get("function") or {}).get("name") or "")
    elif choice not in (None, "auto"):
        return Rejection("bad_request", "tool_choice must be none, auto, required or a function")
    response_format = payload.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if response_format is not None and kind not in ("text", "json_object", "json_schema"):
        return Rejection(
            "bad_request", "response_format.type must be text, json_object or json_schema"
        )
    schema = None
    if kind == "json_schema":
        spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            return Rejection("bad_request", "response_format.json_schema.schema is required")
    return {
        "tools": tools,
        "forced_tool": forced,
        "users_turn": _users_turn(messages),
        "prefill": _prefill(messages),
        "json_mode": kind in ("json_object", "json_schema"),
        "json_schema": schema,
        "logprobs": payload.get("logprobs") is True,
        "stop": _stops(payload.get("stop")),
    }


def show_capabilities(model: SimModel) -> list[str]:
    """What Ollama's `/api/show` says the model can do, in Ollama's order and names."""
    wanted = (
        ("completion", model.chat),
        ("tools", model.chat and model.tools),
        ("vision", model.vision),
        ("embedding", model.embedding),
    )
    return [name for name, present in wanted if present]


def ollama_tool_calls(plan: Plan) -> list[dict[str, Any]]:
    return [
        {"function": {"index": call.index, "name": call.name, "arguments": call.arguments_object}}
        for call in plan.tool_calls
    ]


def openai_tool_calls(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "id": call.call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in plan.tool_calls
    ]


def openai_tool_call_deltas(plan: Plan) -> list[dict[str, Any]]:
    """The deltas OpenAI streams per call: id and name first, then the arguments in pieces."""
    deltas: list[dict[str, Any]] = []
    for call in plan.tool_calls:
        deltas.append(
            {
                "index": call.index,
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
        )
        deltas.extend(
            {"index": call.index, "function": {"arguments": piece}}
            for piece in argument_pieces(call.arguments)
        )
    return deltas
