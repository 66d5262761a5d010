"""OpenAI features on Ollama's native API: tools, `format`, logprobs, extras, embeddings.

Checked against ollama/ollama `docs/api.md` and `api/types.go` (ChatRequest `tools`,
`format`, `logprobs`, `top_logprobs`, `think`, `keep_alive`; Message `tool_calls`,
`tool_name`; ToolCall `function` {`index`, `name`, `arguments`}; EmbedRequest/EmbedResponse):
- Tool-call arguments are a JSON *object* (OpenAI: a JSON *string*), and Ollama sends no
  call ids: we convert both ways and mint a stable id per call (`stable_call_id`).
  A tool result names its tool with `tool_name`; we find it from the assistant call that
  `tool_call_id` answers when the caller did not say `name`.
- Ollama streams a tool call whole, in one chunk; we pass it on as one OpenAI delta per
  call (id, name and all arguments at once), which OpenAI clients assemble the same way.
- Ollama reports `done_reason: stop` after tool calls; OpenAI says `tool_calls`.
- `format` is `"json"` or a JSON schema (structured outputs, Ollama 0.5+).
- `logprobs` / `top_logprobs` (Ollama 0.12.11+) answer `logprobs: [{token, logprob,
  bytes, top_logprobs}]` per chunk; an older Ollama answers none, which `require_logprobs`
  turns into a refusal rather than a silent drop.
- Ollama has no `tool_choice`: `auto` is its behaviour, `none` is honoured by not sending
  the tools, `required` or a named function hold the output to the function's parameters
  with `format` and the answer becomes that call (services/runtimes/forced_tools.py).
"""

from __future__ import annotations

from typing import Any

from services.errors import ErrorCode, InferbusError
from services.runtimes.base import ChatCall, EmbedCall
from services.runtimes.forced_tools import forced_call
from services.wire import Message
from services.wire_features import (
    FunctionCall,
    FunctionCallDelta,
    ToolCall,
    ToolCallDelta,
    canonical_arguments,
    stable_call_id,
)

# `extra` keys that are Ollama options under the same (or Ollama's own) name.
_OPTION_NAMES = {
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "repetition_penalty": "repeat_penalty",  # vLLM's name
    "repeat_last_n": "repeat_last_n",
    "num_ctx": "num_ctx",
    "num_keep": "num_keep",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
}
_TOP_LEVEL = frozenset({"keep_alive", "think", "truncate", "template"})
# OpenAI fields that do not change the answer: dropped for Ollama without a word.
_HARMLESS = frozenset({"metadata", "store", "service_tier"})


def _bad(field: str, reason: str) -> InferbusError:
    return InferbusError(ErrorCode.BAD_REQUEST, f"{field}: {reason}")


def feature_fields(call: ChatCall) -> tuple[dict[str, Any], dict[str, Any]]:
    """(top-level fields, extra options) of `/api/chat` for the call's OpenAI features."""
    body: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if call.tools and call.tool_choice != "none":
        body["tools"] = [tool.model_dump(exclude_none=True) for tool in call.tools]
    forced = forced_call(call)
    response_format = call.response_format
    if forced is not None:
        body["format"] = forced.schema()
    elif response_format is not None and response_format.wants_json:
        body["format"] = response_format.schema_ or "json"
    params = call.params
    if params.presence_penalty is not None:
        options["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty is not None:
        options["frequency_penalty"] = params.frequency_penalty
    if params.logprobs:
        body["logprobs"] = True
        if params.top_logprobs:
            body["top_logprobs"] = params.top_logprobs
    for key, value in call.extra.items():
        _map_extra(key, value, body, options)
    return body, options


def _map_extra(key: str, value: Any, body: dict[str, Any], options: dict[str, Any]) -> None:
    if key in _OPTION_NAMES:
        options[_OPTION_NAMES[key]] = value
    elif key in _TOP_LEVEL:
        body[key] = value
    elif key == "guided_json" and isinstance(value, dict):
        body["format"] = value  # vLLM's structured output spelling: the same schema
    elif key == "chat_template_kwargs" and isinstance(value, dict):
        if "enable_thinking" in value:
            body["think"] = bool(value["enable_thinking"])
    elif key not in _HARMLESS:
        raise _bad(f"extra.{key}", "Ollama has no such parameter")


def ollama_messages(messages: list[Message], render: Any) -> list[dict[str, Any]]:
    """Each message rendered by `render`, plus tool calls (arguments as objects) and the
    tool name of each tool result."""
    names_by_id: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        rendered: dict[str, Any] = render(message)
        if message.tool_calls:
            rendered["tool_calls"] = [_ollama_call(position, call) for call in message.tool_calls]
            names_by_id.update({call.id: call.function.name for call in message.tool_calls})
        if message.role == "tool":
            name = message.name or names_by_id.get(message.tool_call_id or "")
            if name:
                rendered["tool_name"] = name
        out.append(rendered)
    return out


def _ollama_call(position: int, call: ToolCall) -> dict[str, Any]:
    try:
        arguments = call.arguments_object()
    except ValueError:
        raise _bad(
            f"messages.{position}.tool_calls", "function arguments must be a JSON object"
        ) from None
    return {"function": {"name": call.function.name, "arguments": arguments}}


def tool_calls_of(message: dict[str, Any], first_index: int = 0) -> list[ToolCall]:
    """Ollama's `message.tool_calls` as OpenAI tool calls, with stable ids."""
    calls: list[ToolCall] = []
    for offset, raw in enumerate(message.get("tool_calls") or ()):
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            continue
        name = str(function["name"])
        arguments = canonical_arguments(function.get("arguments"))
        given_id = raw.get("id")
        call_id = (
            given_id
            if isinstance(given_id, str) and given_id
            else stable_call_id(first_index + offset, name, arguments)
        )
        calls.append(ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments)))
    return calls


def as_deltas(calls: list[ToolCall], first_index: int) -> list[ToolCallDelta]:
    """Whole calls as OpenAI stream deltas: one delta per call, everything at once."""
    return [
        ToolCallDelta(
            index=first_index + offset,
            id=call.id,
            type="function",
            function=FunctionCallDelta(name=call.function.name, arguments=call.function.arguments),
        )
        for offset, call in enumerate(calls)
    ]


def finish_reason_of(done_reason: Any, saw_tool_calls: bool) -> str | None:
    """OpenAI's finish reason: `tool_calls` when the model called tools."""
    if saw_tool_calls and done_reason in (None, "stop"):
        return "tool_calls"
    return done_reason if isinstance(done_reason, str) else None


def logprob_entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Ollama's `logprobs` list as OpenAI's `logprobs.content` entries."""
    entries: list[dict[str, Any]] = []
    for raw in data.get("logprobs") or ():
        if not isinstance(raw, dict) or "token" not in raw:
            continue
        entries.append(
            {
                "token": raw["token"],
                "logprob": raw.get("logprob", 0.0),
                "bytes": raw.get("bytes"),
                "top_logprobs": [
                    {"token": t.get("token"), "logprob": t.get("logprob"), "bytes": t.get("bytes")}
                    for t in raw.get("top_logprobs") or ()
                    if isinstance(t, dict)
                ],
            }
        )
    return entries


def embed_body(call: EmbedCall) -> dict[str, Any]:
    """`POST /api/embed`: `input` is always a list, so the answer is one vector per input."""
    body: dict[str, Any] = {"model": call.model, "input": call.inputs}
    if call.dimensions is not None:
        body["dimensions"] = call.dimensions
    options: dict[str, Any] = {}
    for key, value in call.extra.items():
        _map_extra(key, value, body, options)
    if options:
        body["options"] = options
    return body


def vectors_of(data: Any) -> list[list[float]]:
    """`/api/embed`'s `embeddings`, checked to be lists of numbers."""
    vectors = data.get("embeddings") if isinstance(data, dict) else None
    if not isinstance(vectors, list) or not all(
        isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in vectors
    ):
        raise InferbusError(
            ErrorCode.BACKEND_ERROR, "unreadable runtime response: /api/embed has no embeddings"
        )
    return [[float(x) for x in vector] for vector in vectors]
