"""A job's answer in Anthropic's Messages shapes: the whole message, the event stream and
the error body (pure, apart from the stream's own state).

Checked against the official `anthropic` client (`types/message.py`, `usage.py`,
`raw_message_stream_event.py`, `lib/streaming/_messages.py` `accumulate_event`, and
`_streaming.py`, which raises the error of an `error` event and skips `ping`):
- a message is `{id, type: "message", role: "assistant", model, content, stop_reason,
  stop_sequence, usage: {input_tokens, output_tokens}}`; content blocks are `thinking`
  (the model's reasoning, first; `signature` is required by the client's ThinkingBlock and
  is "" here, as the reasoning is the open model's own, signed by nobody; its `thinking`
  is "" and no `thinking_delta` is sent under `thinking.display: omitted`), `text` and
  `tool_use` (`input` the parsed arguments object);
- `stop_reason`: `end_turn`, `max_tokens` (the job's `length`), `tool_use`, `refusal`, and
  `stop_sequence` (with the string) when the runtime said which stop string ended it;
- a stream is `message_start` (content empty, stop_reason null), one `ping`, per block
  `content_block_start` / `content_block_delta` (`thinking_delta`, then one
  `signature_delta` as the thinking block closes; `text_delta`, `input_json_delta`) /
  `content_block_stop`, then `message_delta` (stop_reason, usage) and `message_stop`; each
  as `event: <type>` + `data: <json>`. An error after the first event is an `error` event;
- errors: `{"type": "error", "error": {"type", "message"}}` with the HTTP status of the
  code (the client picks its exception class by status).
"""

from __future__ import annotations

import json
from typing import Any

from router.attempts.route import Route
from services.errors import HTTP_STATUS, ErrorCode
from services.wire import JobResponse, Piece, Result, Thinking
from services.wire_features import ToolCall, ToolCallDelta

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}


def stop_of(result: Result | None) -> dict[str, Any]:
    """`stop_reason` and `stop_sequence` of an answer: `stop_sequence` when the runtime
    said which of the caller's stop strings ended it (vLLM does; Ollama and llama.cpp
    do not, and such an answer ends `end_turn`)."""
    if result is None:
        return {"stop_reason": "end_turn", "stop_sequence": None}
    if result.stop_sequence is not None and not result.tool_calls:
        return {"stop_reason": "stop_sequence", "stop_sequence": result.stop_sequence}
    reason = stop_reason_of(result.finish_reason, bool(result.tool_calls))
    return {"stop_reason": reason, "stop_sequence": None}


def stop_reason_of(finish_reason: str | None, has_calls: bool) -> str:
    if has_calls and finish_reason in (None, "stop", "tool_calls"):
        return "tool_use"
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def error_type_of(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error")


def error_body(code: ErrorCode | str, message: str, status: int | None = None) -> dict[str, Any]:
    """Anthropic's error body; the status defaults to the one our code maps to."""
    if status is None:
        status = HTTP_STATUS[code] if isinstance(code, ErrorCode) else 500
    return {"type": "error", "error": {"type": error_type_of(status), "message": message}}


def tool_input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the object `tool_use.input` is; text the model made that is
    not a JSON object is kept whole under `arguments` rather than lost."""
    try:
        return call.arguments_object()
    except ValueError:
        return {"arguments": call.function.arguments}


def usage_of(response: JobResponse) -> dict[str, int]:
    usage = response.result.usage if response.result else None
    return {
        "input_tokens": usage.prompt_tokens if usage else 0,
        "output_tokens": usage.completion_tokens if usage else 0,
    }


def content_blocks(response: JobResponse, omit_thinking: bool = False) -> list[dict[str, Any]]:
    """The answer's blocks; a thinking block without its text when `omit_thinking`
    (`thinking.display: omitted`)."""
    result = response.result
    if result is None:
        return []
    blocks: list[dict[str, Any]] = []
    if result.thinking:
        thought = "" if omit_thinking else result.thinking
        blocks.append({"type": "thinking", "thinking": thought, "signature": ""})
    if result.text or not result.tool_calls:
        blocks.append({"type": "text", "text": result.text})
    blocks.extend(
        {"type": "tool_use", "id": call.id, "name": call.function.name, "input": tool_input(call)}
        for call in result.tool_calls or ()
    )
    return blocks


def message_body(
    response: JobResponse, route: Route, model: str, omit_thinking: bool = False
) -> dict[str, Any]:
    """The whole answer as an Anthropic message (plus the router's `route`)."""
    result = response.result
    return {
        "id": f"msg_{response.job_id}",
        "type": "message",
        "role": "assistant",
        "model": response.model or model,
        "content": content_blocks(response, omit_thinking),
        **stop_of(result),
        "usage": usage_of(response),
        "route": route.model_dump(),
    }


def event(kind: str, body: dict[str, Any]) -> bytes:
    """One server-sent event: `event: kind` and its JSON (which repeats `type`)."""
    data = json.dumps({"type": kind, **body}, separators=(",", ":"), ensure_ascii=False)
    return f"event: {kind}\ndata: {data}\n\n".encode()


class AnthropicEvents:
    """Writes a job's stream as Anthropic's events (a `streams.StreamFormat`).

    Reasoning goes to a `thinking` block, text pieces to a text block, tool-call pieces to
    a `tool_use` block per call
    (`index` of the job's call; its arguments as `input_json_delta`s); a new kind of piece
    closes the open block and opens the next, as Anthropic's blocks never interleave.
    """

    media_type = "text/event-stream"

    def __init__(self, job_id: str, model: str, omit_thinking: bool = False) -> None:
        self._id = f"msg_{job_id}"
        self._omit_thinking = omit_thinking  # `thinking.display: omitted`: no thinking_delta
        self._model = model
        self._started = False
        self._blocks = 0  # blocks opened so far; the open one is `_blocks - 1`
        # ("thinking", -1), ("text", -1) or ("tool", call index)
        self._open: tuple[str, int] | None = None
        self._answered = False  # a text or tool_use block was streamed

    def keepalive(self) -> bytes:
        """Anthropic's own keep-alive while the call waits in line for a slot."""
        return event("ping", {})

    def use_model(self, model: str) -> None:
        self._model = model

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event("message_start", {"message": message}) + event("ping", {})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        out = b""
        if self._open == ("thinking", -1):
            signed = {"type": "signature_delta", "signature": ""}
            out = event("content_block_delta", {"index": self._blocks - 1, "delta": signed})
        self._open = None
        return out + event("content_block_stop", {"index": self._blocks - 1})

    def _open_block(self, kind: tuple[str, int], block: dict[str, Any]) -> bytes:
        out = self._close()
        self._open = kind
        self._answered = self._answered or kind[0] != "thinking"
        self._blocks += 1
        return out + event(
            "content_block_start", {"index": self._blocks - 1, "content_block": block}
        )

    def _text(self, text: str) -> bytes:
        if not text:
            return b""
        out = (
            b""
            if self._open == ("text", -1)
            else self._open_block(("text", -1), {"type": "text", "text": ""})
        )
        delta = {"type": "text_delta", "text": text}
        return out + event("content_block_delta", {"index": self._blocks - 1, "delta": delta})

    def _thinking(self, text: str) -> bytes:
        if not text:
            return b""
        out = b""
        if self._open != ("thinking", -1):
            block = {"type": "thinking", "thinking": "", "signature": ""}
            out = self._open_block(("thinking", -1), block)
        if self._omit_thinking:
            return out
        delta = {"type": "thinking_delta", "thinking": text}
        return out + event("content_block_delta", {"index": self._blocks - 1, "delta": delta})

    def _tool(self, piece: ToolCallDelta) -> bytes:
        out = b""
        if self._open != ("tool", piece.index):
            block = {
                "type": "tool_use",
                "id": piece.id or f"toolu_{self._id}_{piece.index}",
                "name": piece.function.name or "",
                "input": {},
            }
            out = self._open_block(("tool", piece.index), block)
        if piece.function.arguments:
            delta = {"type": "input_json_delta", "partial_json": piece.function.arguments}
            out += event("content_block_delta", {"index": self._blocks - 1, "delta": delta})
        return out

    def delta(self, piece: Piece) -> bytes:
        out = self._start()
        if isinstance(piece, str):
            return out + self._text(piece)
        if isinstance(piece, Thinking):
            return out + self._thinking(piece.text)
        for call in piece:
            out += self._tool(call)
        return out

    def final(self, response: JobResponse, _route: Route) -> bytes:
        if response.model:
            self._model = response.model
        if response.error is not None:
            status = HTTP_STATUS[response.error.code]
            body = error_body(response.error.code, response.error.message, status)
            return self._close() + event("error", {"error": body["error"]})
        out = self._start()
        result = response.result
        if self._blocks == 0 and result is not None and result.thinking:  # a whole answer
            out += self._thinking(result.thinking)
        if not self._answered:
            # Nothing but reasoning was streamed (a whole answer): the rest of it now.
            if result is not None and result.tool_calls:
                out += self._text(result.text)
                for at, call in enumerate(result.tool_calls):
                    out += self._tool(ToolCallDelta.whole(at, call))
            else:
                out += self._open_block(("text", -1), {"type": "text", "text": ""})
                out += self._text(result.text if result else "")
        delta = stop_of(response.result)
        return (
            out
            + self._close()
            + event("message_delta", {"delta": delta, "usage": usage_of(response)})
            + event("message_stop", {})
        )
