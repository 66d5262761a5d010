"""An OpenAI Responses request as a job's fields (pure, stateless).

Checked against the official `openai` client (`types/responses/response_create_params.py`,
`response_input_item_param.py`, `function_tool_param.py`, `response_format_text_config_param.py`):
- `input`: a string (one user message) or items: messages (`role` user, assistant,
  system or developer — a developer message is a system message to a local model; content
  a string or parts `input_text`, `output_text`, `input_image` with a data URI or URL for
  the image policy), `function_call` (→ the assistant's `tool_calls`, consecutive calls
  joined into one turn), `function_call_output` (→ a `tool` message answering `call_id`);
  `reasoning` items (a model's own earlier reasoning) are not sent back;
- `instructions` → the first system message;
- `tools` of type `function` (flat: `name`, `description`, `parameters`, `strict`);
  built-in tools (`web_search`, `file_search`, `computer_use_preview`,
  `code_interpreter`, `image_generation`, `mcp`, ...) are refused by name;
- `tool_choice`: `auto`, `none`, `required`, `{type: function, name}`;
- `text.format`: `json_schema` (`name`, `schema`, `strict`) or `json_object`;
- `max_output_tokens` → `max_tokens`; `temperature`, `top_p`, `user`, `parallel_tool_calls`,
  `stream`;
- `reasoning.effort` `low`, `medium`, `high` or `xhigh` asks the model to think (the chat
  template's `enable_thinking`, `think` on Ollama; a model that cannot think refuses it by
  name); `none` and `minimal` do not.
Nothing is kept between requests: `store: true`, `previous_response_id`, `conversation`
and `item_reference` items are refused by name (send the whole conversation as `input`).
"""

from __future__ import annotations

from typing import Any

from router.http.refusals import Refused, bad, schema_of, text_of
from services.errors import ErrorCode, InferbusError

Fields = dict[str, Any]
MESSAGE_ROLES = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
}
STATELESS = (
    "previous_response_id: responses are not stored here; send the whole conversation as "
    "`input` (and `store: false`)"
)


def responses_job_fields(body: dict[str, Any]) -> Fields | InferbusError:
    """The body as job fields, or BAD_REQUEST naming the field at fault."""
    try:
        return _fields(body)
    except Refused as refused:
        return InferbusError(ErrorCode.BAD_REQUEST, str(refused))


def _fields(body: dict[str, Any]) -> Fields:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "required")
    if body.get("previous_response_id") is not None:
        raise Refused(STATELESS)
    if body.get("store") is True:
        raise bad("store", "responses are not stored here; send store: false")
    if body.get("conversation") is not None:
        raise bad("conversation", "conversations are not stored here")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad("instructions", "a string")
    messages: list[Fields] = [{"role": "system", "content": instructions}] if instructions else []
    messages.extend(input_messages(body.get("input")))
    params: Fields = {}
    if body.get("max_output_tokens") is not None:
        params["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "user"):
        if body.get(name) is not None:
            params[name] = body[name]
    fields: Fields = {
        "model": model,
        "messages": messages,
        "params": params,
        "stream": bool(body.get("stream")),
    }
    if isinstance(body.get("parallel_tool_calls"), bool):
        fields["parallel_tool_calls"] = body["parallel_tool_calls"]
    fields.update(tool_fields(body.get("tools"), body.get("tool_choice")))
    fields.update(text_format(body.get("text")))
    if wants_reasoning(body.get("reasoning")):
        # Read by vLLM and llama.cpp's chat templates, and mapped to `think` for Ollama.
        fields["extra"] = {"chat_template_kwargs": {"enable_thinking": True}}
    if "idempotency_key" in body:
        fields["idempotency_key"] = body["idempotency_key"]
    return fields


REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


def wants_reasoning(reasoning: Any) -> bool:
    """Whether `reasoning: {effort}` asks the model to think (module doc)."""
    if reasoning is None:
        return False
    if not isinstance(reasoning, dict):
        raise bad("reasoning", "an object")
    effort = reasoning.get("effort")
    if effort is None:
        return False
    if effort not in REASONING_EFFORTS:
        raise bad("reasoning.effort", f"one of {', '.join(REASONING_EFFORTS)}")
    return bool(effort not in ("none", "minimal"))


def input_messages(given: Any) -> list[Fields]:
    """`input` as OpenAI-shaped job messages."""
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise bad("input", "required: a string or a non-empty list of items")
    out: list[Fields] = []
    for at, item in enumerate(given):
        where = f"input[{at}]"
        if not isinstance(item, dict):
            raise bad(where, "an item is an object")
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            _add_call(out, item, where)
        elif kind == "function_call_output":
            out.append(_output(item, where))
        elif kind == "reasoning":
            continue  # a model's own earlier reasoning is not sent back
        elif kind == "item_reference":
            raise bad(f"{where}.type", "items are not stored here; send the item itself")
        else:
            raise bad(f"{where}.type", f"{kind!r} items are not supported here")
    return out


def _message(item: dict[str, Any], where: str) -> Fields:
    role = MESSAGE_ROLES.get(item.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise bad(f"{where}.role", f"one of {', '.join(MESSAGE_ROLES)}")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise bad(f"{where}.content", "a string or a list of parts")
    texts: list[str] = []
    images: list[str] = []
    for at, part in enumerate(content):
        here = f"{where}.content[{at}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            texts.append(text_of(part, here))
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            images.append(part["image_url"])
        elif kind == "input_image":
            raise bad(f"{here}.image_url", "required (file_id images are not stored here)")
        else:
            raise bad(f"{here}.type", f"{kind!r} parts are not supported here")
    message: Fields = {"role": role, "content": "".join(texts)}
    if images:
        message["images"] = images
    return message


def _add_call(out: list[Fields], item: dict[str, Any], where: str) -> None:
    """A function call joins the assistant turn it follows, or starts one."""
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "{}")
    if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, str):
        raise bad(where, "a function_call needs call_id, name and arguments (a string)")
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        if not last.get("content"):
            last["content"] = None
        return
    out.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _output(item: dict[str, Any], where: str) -> Fields:
    call_id, output = item.get("call_id"), item.get("output")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.call_id", "required")
    if isinstance(output, list):
        texts = []
        for at, part in enumerate(output):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
                raise bad(f"{where}.output[{at}]", "function outputs carry text here")
            texts.append(text_of(part, f"{where}.output[{at}]"))
        output = "".join(texts)
    if not isinstance(output, str):
        raise bad(f"{where}.output", "a string or text parts")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def tool_fields(tools: Any, choice: Any) -> Fields:
    out: Fields = {}
    if tools:
        if not isinstance(tools, list):
            raise bad("tools", "a list of tools")
        out["tools"] = [_tool(tool, f"tools[{at}]") for at, tool in enumerate(tools)]
    if choice is None:
        return out
    if choice in ("auto", "none", "required"):
        out["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        kind = choice.get("type") if isinstance(choice, dict) else choice
        raise bad("tool_choice", f"{kind!r}: auto, none, required or a function by name")
    return out


def _tool(tool: Any, where: str) -> Fields:
    if not isinstance(tool, dict):
        raise bad(where, "a tool is an object")
    kind = tool.get("type")
    if kind != "function":
        raise bad(f"{where}.type", f"the built-in tool {kind!r} is not available here")
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.name", "required")
    function: Fields = {"name": name}
    if tool.get("parameters") is not None:
        function["parameters"] = schema_of(tool["parameters"], f"{where}.parameters")
    for key in ("description", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def text_format(text: Any) -> Fields:
    """`text.format` as the job's response format."""
    if text is None:
        return {}
    given = text.get("format") if isinstance(text, dict) else None
    if given is None:
        return {}
    kind = given.get("type") if isinstance(given, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind != "json_schema":
        raise bad("text.format.type", "text, json_object or json_schema")
    assert isinstance(given, dict)
    schema = schema_of(given.get("schema"), "text.format.schema")
    spec = {"name": given.get("name") or "response", "schema": schema}
    if isinstance(given.get("strict"), bool):
        spec["strict"] = given["strict"]
    return {"response_format": {"type": "json_schema", "json_schema": spec}}
