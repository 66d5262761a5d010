"""OpenAI features on OpenAI-compatible runtimes: passed through, read back, embeddings.

Checked against openai/openai-openapi `openapi.yaml` (CreateChatCompletionRequest `tools`,
`tool_choice`, `parallel_tool_calls`, `response_format`, `logprobs`, `top_logprobs`;
ChatCompletionMessageToolCall(Chunk); CreateEmbeddingRequest/Response), llama.cpp
`tools/server` (`/props` with `chat_template_caps` and `modalities`; tools need `--jinja`)
and vLLM's `protocol.py` (extra sampling fields such as `top_k`, `min_p`,
`repetition_penalty`, `guided_json`, `chat_template_kwargs` at the top level):
- These servers take OpenAI's shapes as they are, so everything is forwarded unchanged;
  `extra` is merged into the body, but may not replace a field the job itself sets.
- Tool calls come back whole (`message.tool_calls`) or as stream deltas
  (`delta.tool_calls[]` with `index`, the first piece of each call carrying `id`/`name`).
- `/v1/embeddings` answers `data[]` with `index`; we put the vectors back in input order.
- llama.cpp: a `json_schema` format goes as `{"type": "json_object", "schema": ...}`, the
  form both llama-server (`server-common.cpp` reads either) and llama-cpp-python's server
  (which knows only `text | json_object`, and answers 422 to `json_schema`) enforce with
  a grammar.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic

from services.errors import ErrorCode, InferbusError
from services.runtimes.base import ChatCall, EmbedCall, RuntimeKind
from services.runtimes.errors import invalid_response
from services.wire import Message, Params
from services.wire_features import ToolCall, ToolCallDelta

_Call = TypeVar("_Call", ToolCall, ToolCallDelta)
# What every chat or embeddings body of ours sets: never from `extra`.
_JOB_SET = frozenset({"model", "messages", "prompt", "input", "stream", "stream_options"})


def feature_fields(call: ChatCall, kind: RuntimeKind = "openai") -> dict[str, Any]:
    """Top-level request fields for the call's tools, format and extras."""
    body: dict[str, Any] = continuation_fields(call, kind)
    if call.tools:
        body["tools"] = [tool.model_dump(exclude_none=True) for tool in call.tools]
    if call.tool_choice is not None:
        choice = call.tool_choice
        body["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
    if call.parallel_tool_calls is not None and call.tools:
        body["parallel_tool_calls"] = call.parallel_tool_calls
    response_format = call.response_format
    if response_format is not None:
        schema = response_format.schema_
        if kind == "llamacpp" and schema is not None:
            body["response_format"] = {"type": "json_object", "schema": schema}
        else:
            body["response_format"] = response_format.model_dump(exclude_none=True, by_alias=True)
    body.update(_extra(call.extra, set(body) | _JOB_SET))
    return body


def continuation_fields(call: ChatCall, kind: RuntimeKind) -> dict[str, Any]:
    """How this server is told to continue the last (assistant) message instead of
    answering it: vLLM by its flags, llama.cpp's server prefills a final assistant message
    by itself; others cannot, and a job asking it is refused by name."""
    if not call.continue_final:
        return {}
    if kind == "vllm":
        return {"continue_final_message": True, "add_generation_prompt": False}
    if kind == "llamacpp":
        return {}
    raise InferbusError(
        ErrorCode.BAD_REQUEST, f"continue_final: a {kind} runtime cannot continue a message"
    )


def _extra(extra: dict[str, Any], taken: set[str]) -> dict[str, Any]:
    """`extra` merged into a body; the job's own fields are refused at parse time already
    (`JobRequest`), this guards what an adapter set itself."""
    for key in extra:
        if key in taken:
            raise InferbusError(
                ErrorCode.BAD_REQUEST, f"extra.{key}: set by the job itself, not by `extra`"
            )
    if "template" in extra:  # these servers would ignore it and apply the model's own
        if extra["template"]:
            raise InferbusError(
                ErrorCode.BAD_REQUEST,
                "extra.template: only an Ollama runtime applies a request's own template",
            )
        return {key: value for key, value in extra.items() if key != "template"}
    return dict(extra)


def sampling_fields(params: Params) -> dict[str, Any]:
    """OpenAI parameters beyond the basic five, only when set."""
    out: dict[str, Any] = {}
    for name in ("presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "user"):
        value = getattr(params, name)
        if value is not None:
            out[name] = value
    return out


def message_fields(message: Message) -> dict[str, Any]:
    """A message's tool-call fields, as OpenAI sends them."""
    out: dict[str, Any] = {}
    if message.tool_calls:
        out["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _tool_calls(holder: dict[str, Any], shape: type[_Call]) -> list[_Call]:
    raw = holder.get("tool_calls")
    if not raw:
        return []
    try:
        return [shape.model_validate(item) for item in raw]
    except pydantic.ValidationError as exc:
        raise invalid_response(f"tool_calls: {exc.errors(include_url=False)[0]['msg']}") from exc


def tool_calls_of(message: dict[str, Any]) -> list[ToolCall]:
    """A message's whole tool calls."""
    return _tool_calls(message, ToolCall)


def tool_deltas_of(delta: dict[str, Any]) -> list[ToolCallDelta]:
    """A stream delta's tool-call pieces."""
    return _tool_calls(delta, ToolCallDelta)


def logprobs_of(choice: dict[str, Any]) -> dict[str, Any] | None:
    """`choice.logprobs` as our Result carries it: `{"content": [...]}` only."""
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
        return {"content": logprobs["content"]}
    return None


def embed_body(call: EmbedCall) -> dict[str, Any]:
    body: dict[str, Any] = {"model": call.model, "input": call.inputs, "encoding_format": "float"}
    if call.dimensions is not None:
        body["dimensions"] = call.dimensions
    body.update(_extra(call.extra, set(body) | _JOB_SET))
    return body


def vectors_of(data: Any) -> list[list[float]]:
    """`data[].embedding` in `index` order."""
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise invalid_response("/v1/embeddings has no `data` list")
    ordered = sorted(
        (e for e in entries if isinstance(e, dict)), key=lambda e: int(e.get("index") or 0)
    )
    vectors: list[list[float]] = []
    for entry in ordered:
        vector = entry.get("embedding")
        if not isinstance(vector, list) or not all(_is_number(x) for x in vector):
            # base64, or one vector per token (a llama.cpp model without pooling)
            raise invalid_response("an embedding is not one list of numbers")
        vectors.append([float(x) for x in vector])
    return vectors


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def capabilities_from_props(props: Any) -> tuple[str, ...]:
    """What llama.cpp's `/props` says the served model can do; () when it says nothing."""
    if not isinstance(props, dict):
        return ()
    caps = props.get("chat_template_caps")
    modalities = props.get("modalities")
    found: list[str] = []
    if isinstance(caps, dict) or props.get("chat_template"):
        found.append("completion")
    if isinstance(caps, dict) and (caps.get("supports_tools") or caps.get("supports_tool_calls")):
        found.append("tools")
    if isinstance(modalities, dict) and modalities.get("vision"):
        found.append("vision")
    return tuple(found)
