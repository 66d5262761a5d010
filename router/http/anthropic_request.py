"""An Anthropic Messages request as a job's fields (pure).

Checked against Anthropic's Messages API and the official `anthropic` Python client
(`types/message_create_params.py`, `*_block_param.py`, `tool_choice_*_param.py`):
- `model`, `max_tokens` (required, as Anthropic requires it) and `messages` (roles `user`
  and `assistant` only; content a string or blocks);
- `system`: a string or text blocks, the job's first message;
- blocks: `text`; `image` with a `base64` source (a data URI on the job) or a `url` source
  (the router's image policy decides, as for every dialect); `tool_use` in an assistant
  turn → that message's `tool_calls` (arguments the JSON text of `input`); `tool_result`
  in a user turn → a `tool` message answering `tool_use_id` (its text, or its text blocks;
  `is_error` says so in the text), placed before the turn's other content as OpenAI's order
  wants; the model's own `thinking` / `redacted_thinking` blocks from earlier turns are not
  sent back; other blocks (documents, server tool results) are refused by name;
- `tools`: custom tools (`name`, `description`, `input_schema`) become function tools;
  Anthropic's built-in tools (a `type` such as `web_search_20250305`, `bash_20250124`)
  are refused by name;
- `tool_choice`: `auto`, `any` (→ `required`), `tool` (→ that function), `none`;
  `disable_parallel_tool_use` → `parallel_tool_calls: false`;
- `stop_sequences` → `stop`; `temperature`, `top_p`; `top_k` → `extra.top_k`;
  `metadata.user_id` → `user`; `thinking` enabled → the chat template's
  `enable_thinking` (`think` on Ollama; a model whose record says it cannot think is
  refused naming the field; `display: omitted` keeps the thinking blocks, without their
  text); `output_config.format`
  (a JSON schema) → `response_format`; `stream`.
Fields that change nothing the fleet does (`service_tier`, `cache_control` on blocks) are
dropped; `mcp_servers` and `container` are refused by name.
"""

from __future__ import annotations

import json
from typing import Any

from router.http.refusals import Refused, bad, schema_of, text_of
from services.errors import ErrorCode, InferbusError

Fields = dict[str, Any]
REFUSED_FIELDS = ("mcp_servers", "container")


def messages_job_fields(body: dict[str, Any]) -> Fields | InferbusError:
    """The body as job fields (`services.wire.JobRequest` names), or BAD_REQUEST naming
    the field at fault."""
    try:
        return _fields(body)
    except Refused as refused:
        return InferbusError(ErrorCode.BAD_REQUEST, str(refused))


def _fields(body: dict[str, Any]) -> Fields:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "required: the model to answer with")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad("max_tokens", "required: a positive integer")
    for name in REFUSED_FIELDS:
        if body.get(name):
            raise bad(name, "not supported by this router")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "required: a non-empty list")
    params: Fields = {"max_tokens": max_tokens}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            params[name] = body[name]
    if body.get("stop_sequences"):
        params["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        params["user"] = metadata["user_id"]
    fields: Fields = {
        "model": model,
        "messages": [*system_messages(body.get("system")), *chat_messages(messages)],
        "params": params,
        "stream": bool(body.get("stream")),
    }
    extra: Fields = {}
    if body.get("top_k") is not None:
        extra["top_k"] = body["top_k"]
    if thinking_wanted(body.get("thinking")):
        # Read by vLLM and llama.cpp's chat templates, and mapped to `think` for Ollama.
        extra["chat_template_kwargs"] = {"enable_thinking": True}
    if extra:
        fields["extra"] = extra
    fields.update(tool_fields(body.get("tools"), body.get("tool_choice")))
    fields.update(output_format(body.get("output_config")))
    if "idempotency_key" in body:
        fields["idempotency_key"] = body["idempotency_key"]
    return fields


def system_messages(system: Any) -> list[Fields]:
    """`system` (a string or text blocks) as the job's first message, when given."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        texts = []
        for at, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise bad(f"system[{at}]", "system blocks are text blocks")
            texts.append(text_of(block, f"system[{at}]"))
        return [{"role": "system", "content": "\n\n".join(texts)}]
    raise bad("system", "a string or a list of text blocks")


THINKING_TYPES = ("enabled", "adaptive", "between_tools", "disabled")
THINKING_DISPLAYS = ("summarized", "omitted")


def thinking_wanted(thinking: Any) -> bool:
    """`thinking: {type: enabled | adaptive | between_tools}` asks the model to think;
    `disabled` does not."""
    if thinking is None:
        return False
    if not isinstance(thinking, dict) or thinking.get("type") not in THINKING_TYPES:
        raise bad("thinking.type", f"one of {', '.join(THINKING_TYPES)}")
    if thinking.get("display") not in (None, *THINKING_DISPLAYS):
        raise bad("thinking.display", f"one of {', '.join(THINKING_DISPLAYS)}")
    return bool(thinking["type"] != "disabled")


def thinking_omitted(body: Fields) -> bool:
    """`thinking.display: omitted`: thinking blocks come without their text (a body
    already read by `messages_job_fields`)."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("display") == "omitted"


def output_format(config: Any) -> Fields:
    """`output_config.format` (`{type: json_schema, schema}`) as the job's response format;
    `output_config.effort` changes nothing a local model does and is dropped."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise bad("output_config", "an object")
    given = config.get("format")
    if given is None:
        return {}
    if not isinstance(given, dict) or given.get("type") != "json_schema":
        raise bad("output_config.format.type", "json_schema")
    schema = schema_of(given.get("schema"), "output_config.format.schema")
    spec = {"name": "output", "schema": schema}
    return {"response_format": {"type": "json_schema", "json_schema": spec}}


def chat_messages(messages: list[Any]) -> list[Fields]:
    """Anthropic's turns as OpenAI-shaped job messages (a user turn's tool results become
    `tool` messages ahead of its other content)."""
    out: list[Fields] = []
    for at, message in enumerate(messages):
        where = f"messages[{at}]"
        if not isinstance(message, dict):
            raise bad(where, "a message is an object with role and content")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise bad(f"{where}.role", f"must be user or assistant, not {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise bad(f"{where}.content", "a string or a list of content blocks")
        out.extend(_turn(role, content, where))
    return out


def _turn(role: str, blocks: list[Any], where: str) -> list[Fields]:
    texts: list[str] = []
    images: list[str] = []
    calls: list[Fields] = []
    results: list[Fields] = []
    for at, block in enumerate(blocks):
        here = f"{where}.content[{at}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(text_of(block, here))
        elif kind == "image":
            images.append(image_of(block.get("source"), f"{here}.source"))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_call(block, here))
        elif kind == "tool_result" and role == "user":
            results.append(_result(block, here))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # the model's own earlier reasoning is not sent back
        else:
            raise bad(f"{here}.type", f"{kind!r} blocks are not supported in a {role} turn")
    turn: list[Fields] = list(results)
    if texts or images or calls or not results:
        message: Fields = {"role": role, "content": "".join(texts)}
        if images:
            message["images"] = images
        if calls:
            message["tool_calls"] = calls
            if not texts:
                message["content"] = None
        turn.append(message)
    return turn


def image_of(source: Any, where: str) -> str:
    """An image source as the job carries it: a data URI, or the URL for the image policy."""
    if not isinstance(source, dict):
        raise bad(where, "an image needs a source")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str) or not data:
            raise bad(where, "a base64 source needs media_type and data")
        return f"data:{media_type};base64,{data}"
    if kind == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise bad(f"{where}.type", "base64 or url")


def _call(block: dict[str, Any], where: str) -> Fields:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise bad(where, "a tool_use block needs id and name")
    if not isinstance(arguments, dict):
        raise bad(f"{where}.input", "an object")
    text = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def _result(block: dict[str, Any], where: str) -> Fields:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.tool_use_id", "required")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for at, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad(f"{where}.content[{at}]", "tool results carry text blocks here")
            parts.append(text_of(part, f"{where}.content[{at}]"))
        text = "".join(parts)
    else:
        raise bad(f"{where}.content", "a string or text blocks")
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def tool_fields(tools: Any, choice: Any) -> Fields:
    """`tools` and `tool_choice` as the job's (OpenAI-shaped) fields."""
    out: Fields = {}
    if tools:
        if not isinstance(tools, list):
            raise bad("tools", "a list of tools")
        out["tools"] = [_tool(tool, f"tools[{at}]") for at, tool in enumerate(tools)]
    if choice is None:
        return out
    if not isinstance(choice, dict):
        raise bad("tool_choice", "an object with a type")
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise bad("tool_choice.type", "one of auto, any, tool (with a name), none")
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def _tool(tool: Any, where: str) -> Fields:
    if not isinstance(tool, dict):
        raise bad(where, "a tool is an object")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise bad(f"{where}.type", f"Anthropic's built-in tool {kind!r} is not available here")
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.name", "required")
    schema = schema_of(tool.get("input_schema"), f"{where}.input_schema")
    function: Fields = {"name": name, "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}
