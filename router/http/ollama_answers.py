"""Answers in Ollama's shapes: chat and generate objects, their NDJSON streams, embeddings,
and errors (ollama/ollama `docs/api.md`, `docs/api/errors.mdx`, `api/types.go`).

Pure: a `JobResponse` (or a stream's pieces) in, Ollama's objects out.

- The last object says `done: true`, `done_reason` (`stop` after tool calls too, as
  Ollama does) and the node's real timings as Ollama's Metrics, in nanoseconds:
  `total_duration` is the worker's total, `load_duration`, `prompt_eval_duration` and
  `eval_duration` what the runtime reported (or the worker measured); counts are the
  usage. Like Ollama (Go's `omitempty`), a value that is zero or unknown is left out.
- Tool calls are Ollama's: arguments as an object, with `index` and the call's `id`. A
  stream delivers each call whole (as Ollama does) on one line before the final object,
  whatever pieces the node's runtime streamed them in.
- An error after the stream started is one more line `{"error": "..."}` (the status is
  already sent); before it, the dialect answers Ollama's error body (router/http/ollama.py).
- Every final object carries `route` (how the fleet served it); clients ignore it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from router.attempts.route import Route
from services.errors import ErrorCode
from services.wire import JobResponse, Piece
from services.wire_features import ToolCall, ToolCallAssembler, ToolCallDelta

__all__ = [
    "OllamaLines",
    "chat_answer",
    "created_at",
    "done_reason",
    "embed_answer",
    "embeddings_answer",
    "generate_answer",
    "load_answer",
    "metrics",
    "ollama_message",
    "ollama_tool_calls",
]

Body = dict[str, Any]
_NS_PER_MS = 1_000_000


def created_at(now_unix: float) -> str:
    """`created_at` as Go marshals a time.Time: RFC 3339, fractional seconds, UTC."""
    return datetime.fromtimestamp(now_unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ns(ms: float | None) -> int:
    return round(ms * _NS_PER_MS) if ms else 0


def metrics(response: JobResponse) -> Body:
    """Ollama's Metrics from the node's timings and usage; zero or unknown ones omitted."""
    timings = response.timings
    usage = response.result.usage if response.result else None
    found = {
        "total_duration": _ns(timings.total_ms),
        "load_duration": _ns(timings.load_ms),
        "prompt_eval_count": usage.prompt_tokens if usage else 0,
        "prompt_eval_duration": _ns(timings.prompt_ms),
        "eval_count": usage.completion_tokens if usage else 0,
        "eval_duration": _ns(timings.eval_ms),
    }
    return {name: value for name, value in found.items() if value}


def done_reason(response: JobResponse) -> str:
    """Ollama's reason: `stop` (also after tool calls), `length`, or what the node said."""
    finish = response.result.finish_reason if response.result else None
    if finish in (None, "tool_calls", "function_call"):
        return "stop"
    return finish


def ollama_tool_calls(calls: list[ToolCall]) -> list[Body]:
    """Calls as Ollama sends them: arguments as an object, `index`, and the call's id."""
    out: list[Body] = []
    for index, call in enumerate(calls):
        try:
            arguments: Any = call.arguments_object()
        except ValueError:  # a runtime's malformed arguments: passed on as they came
            arguments = call.function.arguments
        function = {"index": index, "name": call.function.name, "arguments": arguments}
        out.append({"id": call.id, "function": function})
    return out


def _logprobs(response: JobResponse) -> list[Body] | None:
    """OpenAI's `logprobs.content` entries (what the job carries) in Ollama's list."""
    result = response.result
    entries = (result.logprobs or {}).get("content") if result else None
    if not isinstance(entries, list):
        return None
    out: list[Body] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        top = [
            {key: value for key, value in item.items() if key in ("token", "logprob", "bytes")}
            for item in entry.get("top_logprobs") or ()
            if isinstance(item, dict)
        ]
        shaped: Body = {"token": entry.get("token", ""), "logprob": entry.get("logprob", 0.0)}
        if entry.get("bytes"):
            shaped["bytes"] = entry["bytes"]
        if top:
            shaped["top_logprobs"] = top
        out.append(shaped)
    return out


def _final(response: JobResponse, route: Route, model: str, now_unix: float) -> Body:
    return {
        "model": response.model or model,
        "created_at": created_at(now_unix),
        "done": True,
        "done_reason": done_reason(response),
        **metrics(response),
        "route": route.model_dump(),
    }


def chat_answer(response: JobResponse, route: Route, model: str, now_unix: float) -> Body:
    """`/api/chat` with `stream: false`: the whole message and the final fields."""
    result = response.result
    message: Body = {"role": "assistant", "content": result.text if result else ""}
    if result is not None and result.tool_calls:
        message["tool_calls"] = ollama_tool_calls(result.tool_calls)
    final = _final(response, route, model, now_unix)
    body: Body = {"model": final.pop("model"), "created_at": final.pop("created_at")}
    body["message"] = message
    logprobs = _logprobs(response)
    if logprobs:
        body["logprobs"] = logprobs
    return body | final


def generate_answer(response: JobResponse, route: Route, model: str, now_unix: float) -> Body:
    """`/api/generate` with `stream: false`: `response` is the whole text."""
    result = response.result
    final = _final(response, route, model, now_unix)
    body: Body = {"model": final.pop("model"), "created_at": final.pop("created_at")}
    body["response"] = result.text if result else ""
    logprobs = _logprobs(response)
    if logprobs:
        body["logprobs"] = logprobs
    return body | final


def load_answer(endpoint: str, model: str, *, unload: bool, now_unix: float) -> Body:
    """The answer to a chat or generate with no input: the model is (un)loaded, by Ollama's
    wording; across a fleet the nodes load what they serve, so nothing else happens."""
    body: Body = {"model": model, "created_at": created_at(now_unix)}
    if endpoint == "chat":
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    return body | {"done": True, "done_reason": "unload" if unload else "load"}


def embed_answer(response: JobResponse, model: str) -> Body:
    """`/api/embed`: one vector per input, the node's timings, the tokens embedded."""
    result = response.result
    found = metrics(response)
    body: Body = {
        "model": response.model or model,
        "embeddings": (result.embeddings if result else None) or [],
    }
    for name in ("total_duration", "load_duration", "prompt_eval_count"):
        if name in found:
            body[name] = found[name]
    return body


def embeddings_answer(response: JobResponse) -> Body:
    """`/api/embeddings` (the older one): the one vector."""
    vectors = (response.result.embeddings if response.result else None) or [[]]
    return {"embedding": vectors[0]}


# Job fields that are top-level fields of Ollama's requests: an error names them as the
# client sent them (`think: ...`, not `extra.think: ...`).
_TOP_LEVEL_IN_EXTRA = ("extra.think", "extra.keep_alive", "extra.truncate", "extra.template")


def ollama_message(code: ErrorCode, message: str) -> str:
    """An error's message as Ollama clients read it: a missing model says `not found`
    (the `ollama` CLI offers to pull on it); a field is named as Ollama's body has it."""
    if code == ErrorCode.MODEL_NOT_FOUND and "not found" not in message:
        return f"model not found: {message}"
    if message.startswith(_TOP_LEVEL_IN_EXTRA):
        return message.removeprefix("extra.")
    return message


def _line(body: Body) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


class OllamaLines:
    """Ollama's NDJSON stream of `/api/chat` (`message.content` pieces) or `/api/generate`
    (`response` pieces): one line per piece, the tool calls whole on one line, then the
    final object; an error after the first piece is one more `{"error"}` line."""

    media_type = "application/x-ndjson"

    def __init__(self, endpoint: str, model: str, clock: Callable[[], float]) -> None:
        self._chat = endpoint == "chat"
        self._model = model
        self._clock = clock
        self._calls = ToolCallAssembler()
        self._has_calls = False
        self._has_text = False

    def use_model(self, model: str) -> None:
        """The model actually serving the stream, known once its target is chosen."""
        self._model = model

    def keepalive(self) -> bytes:
        """Nothing while the call waits in line: Ollama's clients parse every line as JSON."""
        return b""

    def _head(self) -> Body:
        return {"model": self._model, "created_at": created_at(self._clock())}

    def _piece(self, text: str) -> Body:
        if self._chat:
            return self._head() | {"message": {"role": "assistant", "content": text}}
        return self._head() | {"response": text}

    def delta(self, piece: Piece) -> bytes:
        if isinstance(piece, str):
            self._has_text = self._has_text or bool(piece)
            return _line(self._piece(piece) | {"done": False})
        self._calls.add(piece)
        self._has_calls = True
        return b""

    def final(self, response: JobResponse, route: Route) -> bytes:
        if response.model:
            self._model = response.model
        if response.error is not None:
            error = response.error
            return _line({"error": ollama_message(error.code, error.message)})
        out = b""
        result = response.result
        if not self._has_text and result is not None and result.text:
            # A node that answered whole (a replay) streamed nothing: the text goes first.
            out = self.delta(result.text)
        if not self._has_calls and result is not None and result.tool_calls:
            self._has_calls = True
            self._calls.add([ToolCallDelta.whole(n, c) for n, c in enumerate(result.tool_calls)])
        if self._has_calls:
            calls = ollama_tool_calls(self._calls.calls())
            message = {"role": "assistant", "content": "", "tool_calls": calls}
            head = self._head()
            if self._chat:
                out += _line(head | {"message": message, "done": False})
            else:
                out += _line(head | {"response": "", "tool_calls": calls, "done": False})
        final = self._piece("") | _final(response, route, self._model, self._clock())
        return out + _line(final)
