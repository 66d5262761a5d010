"""Ollama's request bodies as job fields: `/api/chat`, `/api/generate`, `/api/embed`,
`/api/embeddings` (shapes from ollama/ollama `docs/api.md` and `api/types.go`).

Pure: a body in, the fields of a `JobRequest` out (or BAD_REQUEST naming the field).

- `stream` is true unless the body says `false` (Ollama's default, unlike OpenAI's).
- `options`: the sampling options become the job's `params` (`num_predict` is
  `max_tokens`; -1 and -2, "no limit", leave it unset); the other model options Ollama
  knows (`top_k`, `min_p`, `num_ctx`, `repeat_penalty`, mirostat...) travel in `extra`
  under Ollama's names, which the worker's Ollama adapter puts back in `options` and
  OpenAI-compatible servers (llama.cpp, vLLM) read under the same names. Options that
  place a model on hardware (`num_gpu`, `num_thread`, `use_mmap`...) are the node's
  business, not the caller's: dropped, as Ollama drops options it does not know.
- `format`: `"json"` is `response_format: json_object`, a schema is `json_schema`.
- Messages: `images` stay raw base64; `tool_calls` arguments (objects) become OpenAI's
  JSON strings with a stable id each, and a `tool` message (`tool_name`) answers the
  latest unanswered call of that name, so OpenAI-compatible runtimes get a well-formed
  conversation.
- `keep_alive`, `think` and `truncate` are passed to the node in `extra`.
- An `Idempotency-Key` header (the edge puts it in the body as `idempotency_key`) is
  kept, so a duplicate runs once and its replay says `x-inferbus-cached: true`.
- `/api/generate`: `system` is a system message before the prompt, `images` go with the
  prompt, `raw: true` sends the prompt without the chat template (and without `template`,
  as Ollama ignores it then), `suffix` is fill-in-the-middle. `template` (a Go template
  for this request instead of the model's) travels in `extra`; only a node whose copy of
  the model runs on Ollama is chosen for it (router/selection/needs.py), as no other
  runtime applies one. `context` (the deprecated token memory) cannot be honoured across
  a fleet and is refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from services.errors import ErrorCode, InferbusError
from services.wire_features import canonical_arguments, stable_call_id

__all__ = [
    "OLLAMA_SPELLED",
    "chat_fields",
    "embed_fields",
    "embeddings_fields",
    "generate_fields",
    "is_load_request",
    "load_fields",
    "options_fields",
    "served_name",
]

Fields = dict[str, Any]

# Ollama option → the job's `params` name.
_PARAM_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
# The job's fields an Ollama body spells its own way (`format`, the `options`).
OLLAMA_SPELLED = {
    "params.max_tokens": "options.num_predict",
    **{f"params.{name}": f"options.{option}" for option, name in _PARAM_OPTIONS.items()},
    "response_format.json_schema.schema": "format",
}
# Model options carried in `extra` under Ollama's own names.
_EXTRA_OPTIONS = frozenset(
    {
        "top_k",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "repeat_last_n",
        "num_ctx",
        "num_keep",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)
# Top-level request fields passed to the node as they are.
_PASSED_ON = ("keep_alive", "think", "truncate")
THINK_LEVELS = frozenset({"low", "medium", "high", "max"})


def _bad(field: str, reason: str) -> InferbusError:
    return InferbusError(ErrorCode.BAD_REQUEST, f"{field}: {reason}")


def _model(body: Fields) -> str | InferbusError:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return InferbusError(ErrorCode.BAD_REQUEST, "model is required")
    return model


def _stream(body: Fields) -> bool | InferbusError:
    stream = body.get("stream")
    if stream is None:
        return True
    if not isinstance(stream, bool):
        return _bad("stream", "must be true or false")
    return stream


def options_fields(options: Any) -> tuple[Fields, Fields] | InferbusError:
    """(params, extra) from Ollama's `options`."""
    if options is None:
        return {}, {}
    if not isinstance(options, dict):
        return _bad("options", "must be an object")
    params: Fields = {}
    extra: Fields = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in _PARAM_OPTIONS:
            params[_PARAM_OPTIONS[key]] = value
        elif key == "num_predict":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return _bad("options.num_predict", "must be a number")
            if value > 0:  # -1: no limit, -2: fill the context
                params["max_tokens"] = int(value)
        elif key in _EXTRA_OPTIONS:
            extra[key] = value
    return params, extra


def _format(value: Any) -> Fields | InferbusError | None:
    """Ollama's `format` as OpenAI's `response_format`."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    return _bad("format", 'must be "json" or a JSON schema object')


def _passed_on(body: Fields) -> Fields | InferbusError:
    extra: Fields = {}
    for key in _PASSED_ON:
        value = body.get(key)
        if value is not None:
            extra[key] = value
    think = extra.get("think")
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        return _bad("think", f"must be true, false or one of {sorted(THINK_LEVELS)}")
    return extra


def _common(body: Fields) -> Fields | InferbusError:
    """What chat and generate share: model, stream, options, format, logprobs, extras."""
    model = _model(body)
    if isinstance(model, InferbusError):
        return model
    stream = _stream(body)
    if isinstance(stream, InferbusError):
        return stream
    options = options_fields(body.get("options"))
    if isinstance(options, InferbusError):
        return options
    params, extra = options
    response_format = _format(body.get("format"))
    if isinstance(response_format, InferbusError):
        return response_format
    passed = _passed_on(body)
    if isinstance(passed, InferbusError):
        return passed
    for key in ("logprobs", "top_logprobs"):
        if body.get(key) is not None:
            params[key] = body[key]
    fields: Fields = {"model": model, "stream": stream, "params": params}
    if response_format is not None:
        fields["response_format"] = response_format
    if extra or passed:
        fields["extra"] = {**extra, **passed}
    return _with_key(body, fields)


def _with_key(body: Fields, fields: Fields) -> Fields:
    """`fields` with the body's idempotency key, when it has one."""
    if "idempotency_key" in body:
        fields["idempotency_key"] = body["idempotency_key"]
    return fields


def _images(value: Any, field: str) -> list[str] | InferbusError:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(image, str) for image in value):
        return _bad(field, "must be a list of base64 strings")
    return value


class _CallIds:
    """Ids for the calls of a conversation, so each `tool` answer names the call it
    answers: the latest call of that tool not answered yet."""

    def __init__(self) -> None:
        self._open: dict[str, list[str]] = {}
        self._count = 0

    def call(self, raw: Any, field: str) -> Fields | InferbusError:
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return _bad(field, "a tool call needs function.name")
        name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):  # tolerated: some clients send OpenAI's string
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError:
                return _bad(field, "function.arguments must be a JSON object")
        if arguments is not None and not isinstance(arguments, dict):
            return _bad(field, "function.arguments must be an object")
        text = canonical_arguments(arguments)
        given = raw.get("id")
        call_id = given if isinstance(given, str) and given else None
        call_id = call_id or stable_call_id(self._count, name, text)
        self._count += 1
        self._open.setdefault(name, []).append(call_id)
        return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}

    def answered(self, name: str | None) -> str | None:
        waiting = self._open.get(name or "")
        return waiting.pop() if waiting else None


def _message(raw: Any, at: int, ids: _CallIds) -> Fields | InferbusError:
    field = f"messages.{at}"
    if not isinstance(raw, dict):
        return _bad(field, "must be an object")
    role = raw.get("role")
    if not isinstance(role, str) or not role:
        return _bad(f"{field}.role", "is required")
    content = raw.get("content")
    if content is not None and not isinstance(content, str):
        return _bad(f"{field}.content", "must be a string")
    images = _images(raw.get("images"), f"{field}.images")
    if isinstance(images, InferbusError):
        return images
    message: Fields = {"role": role, "content": content or ""}
    if images:
        message["images"] = images
    calls = raw.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            return _bad(f"{field}.tool_calls", "must be a list")
        converted = [ids.call(call, f"{field}.tool_calls.{n}") for n, call in enumerate(calls)]
        for call in converted:
            if isinstance(call, InferbusError):
                return call
        message["tool_calls"] = converted
    if role == "tool":
        name = raw.get("tool_name") or raw.get("name")
        if isinstance(name, str) and name:
            message["name"] = name
        given = raw.get("tool_call_id")
        call_id = given if isinstance(given, str) and given else ids.answered(message.get("name"))
        if call_id is not None:
            message["tool_call_id"] = call_id
    return message


def _messages(value: Any) -> list[Fields] | InferbusError:
    if value is None:
        return []
    if not isinstance(value, list):
        return _bad("messages", "must be a list")
    ids = _CallIds()
    out: list[Fields] = []
    for at, raw in enumerate(value):
        message = _message(raw, at, ids)
        if isinstance(message, InferbusError):
            return message
        out.append(message)
    return out


def _tools(value: Any) -> list[Any] | InferbusError | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        return _bad("tools", "must be a list")
    return value


def chat_fields(body: Fields) -> Fields | InferbusError:
    """`POST /api/chat` as job fields."""
    fields = _common(body)
    if isinstance(fields, InferbusError):
        return fields
    messages = _messages(body.get("messages"))
    if isinstance(messages, InferbusError):
        return messages
    tools = _tools(body.get("tools"))
    if isinstance(tools, InferbusError):
        return tools
    fields["messages"] = messages
    if tools is not None:
        fields["tools"] = tools
    return fields


def generate_fields(body: Fields) -> Fields | InferbusError:
    """`POST /api/generate` as job fields: a chat of (system, prompt), or a raw prompt."""
    fields = _common(body)
    if isinstance(fields, InferbusError):
        return fields
    for key, text in (("prompt", body.get("prompt")), ("system", body.get("system"))):
        if text is not None and not isinstance(text, str):
            return _bad(key, "must be a string")
    template = body.get("template")
    if template is not None and not isinstance(template, str):
        return _bad("template", "must be a string")
    if body.get("context"):
        return _bad("context", "not kept across the fleet; send the conversation to /api/chat")
    images = _images(body.get("images"), "images")
    if isinstance(images, InferbusError):
        return images
    prompt: str = body.get("prompt") or ""
    system: str = body.get("system") or ""
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        return _bad("suffix", "must be a string")
    if body.get("raw") or suffix:
        if template and not body.get("raw"):
            return _bad("template", "a fill-in-the-middle prompt takes the model's own template")
        if system:
            return _bad("raw", "a raw prompt takes no system message")
        fields.update(prompt=prompt, raw=bool(body.get("raw")), images=images)
        if suffix:
            fields["suffix"] = suffix
        return fields
    messages: list[Fields] = [{"role": "system", "content": system}] if system else []
    user: Fields = {"role": "user", "content": prompt}
    if images:
        user["images"] = images
    fields["messages"] = [*messages, user]
    if template:
        fields["extra"] = {**fields.get("extra", {}), "template": template}
    return fields


def _embed_common(body: Fields) -> Fields | InferbusError:
    model = _model(body)
    if isinstance(model, InferbusError):
        return model
    options = options_fields(body.get("options"))
    if isinstance(options, InferbusError):
        return options
    _params, extra = options
    passed = _passed_on(body)
    if isinstance(passed, InferbusError):
        return passed
    fields: Fields = {"model": model, "type": "embed"}
    if extra or passed:
        fields["extra"] = {**extra, **passed}
    return _with_key(body, fields)


def embed_fields(body: Fields) -> Fields | InferbusError:
    """`POST /api/embed`: `input` a string or a list of strings; `dimensions`."""
    fields = _embed_common(body)
    if isinstance(fields, InferbusError):
        return fields
    given = body.get("input")
    texts = given if isinstance(given, list) else [given]
    if not all(isinstance(text, str) for text in texts):
        return _bad("input", "a string or a list of strings")
    if texts in ([], [""]):
        return _bad("input", "nothing to embed")
    fields["input"] = texts
    dimensions = body.get("dimensions")
    if dimensions is not None:
        fields["params"] = {"dimensions": dimensions}
    return fields


def embeddings_fields(body: Fields) -> Fields | InferbusError:
    """`POST /api/embeddings` (the older one): one `prompt`, one vector."""
    fields = _embed_common(body)
    if isinstance(fields, InferbusError):
        return fields
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return _bad("prompt", "a non-empty string to embed")
    fields["input"] = [prompt]
    return fields


def load_fields(body: Fields) -> Fields | InferbusError:
    """A load request (no input) as a job of one token on a node that serves the model,
    with the body's `keep_alive` (0: unload it after), answered whole."""
    model = _model(body)
    if isinstance(model, InferbusError):
        return model
    passed = _passed_on(body)
    if isinstance(passed, InferbusError):
        return passed
    fields: Fields = {"model": model, "prompt": "", "params": {"max_tokens": 1}, "stream": False}
    if passed:
        fields["extra"] = passed
    return fields


def served_name(name: str, serves: Callable[[str], bool]) -> str:
    """The name the fleet serves a model under, by Ollama's rule that a name without a tag
    means its `:latest`: `llama3.2` asks for `llama3.2:latest` and `tiny:latest` for a
    model served as `tiny` (llama.cpp and vLLM names have no tag). Unchanged otherwise."""
    if serves(name):
        return name
    base, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:  # no tag (a colon inside a path is not one)
        latest = f"{name}:latest"
        return latest if serves(latest) else name
    if tag == "latest" and serves(base):
        return base
    return name


_INPUT_OF: dict[str, Callable[[Fields], bool]] = {
    "chat": lambda body: bool(body.get("messages")),
    "generate": lambda body: bool(body.get("prompt") or body.get("images") or body.get("suffix")),
}


def is_load_request(endpoint: str, body: Fields) -> bool:
    """A chat without messages or a generate without a prompt: Ollama's way to load (or,
    with `keep_alive: 0`, unload) a model; nothing is generated."""
    return not _INPUT_OF[endpoint](body)
