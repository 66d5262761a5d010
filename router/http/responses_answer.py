"""A job's answer in OpenAI's Responses shapes: the response object and its event stream
(pure, apart from the stream's own state).

Checked against the official `openai` client (`types/responses/response.py`,
`response_output_message.py`, `response_function_tool_call.py`, `response_usage.py`, the
`response_*_event.py` types and `lib/streaming/responses/_responses.py`, whose snapshot
needs every output item added before its deltas and done before `response.completed`):
- output items: a `message` (one `output_text` part) and a `function_call` per call
  (`call_id` the job's call id, `arguments` its JSON text);
- `status`: `completed`, or `incomplete` with `incomplete_details.reason:
  max_output_tokens` when the answer was cut at `max_output_tokens`;
- a stream: `response.created`, `response.in_progress`; per item
  `response.output_item.added`, its content (`response.content_part.added`,
  `response.output_text.delta`..., `response.output_text.done`,
  `response.content_part.done`; or `response.function_call_arguments.delta`...,
  `.done`), `response.output_item.done`; then `response.completed` (or
  `response.incomplete`) with the whole response. Every event has `type` and a rising
  `sequence_number`, and is sent as `event: <type>` + `data: <json>`. A stream broken
  after its first event ends with an `error` event (our code) and `response.failed`,
  whose `error.code` is one of OpenAI's (`response_error.py`): `rate_limit_exceeded`,
  `invalid_prompt` or `server_error`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from router.attempts.route import Route
from services.errors import ErrorCode
from services.wire import JobResponse, Piece
from services.wire_features import ToolCall, ToolCallDelta

Item = dict[str, Any]


_RESPONSE_ERROR_CODES = {
    ErrorCode.BUSY: "rate_limit_exceeded",
    ErrorCode.BAD_REQUEST: "invalid_prompt",
    ErrorCode.CONTEXT_EXCEEDED: "invalid_prompt",
}


def response_error_code(code: ErrorCode) -> str:
    """The code of a failed response's `error`, in OpenAI's words (they name no more)."""
    return _RESPONSE_ERROR_CODES.get(code, "server_error")


def usage_body(response: JobResponse) -> dict[str, Any]:
    usage = response.result.usage if response.result else None
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def text_part(text: str) -> Item:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str = "completed") -> Item:
    content = [text_part(text)] if status == "completed" else []
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def call_item(call_id: str, name: str, arguments: str, status: str = "completed") -> Item:
    return {
        "type": "function_call",
        "id": f"fc_{call_id}",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def output_items(response: JobResponse) -> list[Item]:
    result = response.result
    if result is None:
        return []
    items: list[Item] = []
    if result.text or not result.tool_calls:
        items.append(message_item(f"msg_{response.job_id}", result.text))
    items.extend(
        call_item(call.id, call.function.name, call.function.arguments)
        for call in result.tool_calls or ()
    )
    return items


def response_object(
    job_id: str,
    model: str,
    body: dict[str, Any],
    *,
    status: str,
    output: list[Item],
    created_at: int,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The response object; the request's own settings echoed as OpenAI echoes them."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": f"resp_{job_id}",
        "object": "response",
        "created_at": created_at,
        "status": status,
        "model": model,
        "output": output,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "store": False,
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "text": body.get("text") or {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": usage,
    }


def status_of(response: JobResponse) -> str:
    result = response.result
    return "incomplete" if result is not None and result.finish_reason == "length" else "completed"


def whole_response(response: JobResponse, route: Route, body: dict[str, Any]) -> dict[str, Any]:
    """The whole answer as a response object (plus the router's `route`)."""
    answer = response_object(
        response.job_id,
        response.model or str(body.get("model") or ""),
        body,
        status=status_of(response),
        output=output_items(response),
        created_at=int(time.time()),
        usage=usage_body(response),
    )
    return answer | {"route": route.model_dump()}


class ResponsesEvents:
    """Writes a job's stream as Responses events (a `streams.StreamFormat`)."""

    media_type = "text/event-stream"

    def __init__(self, job_id: str, model: str, body: dict[str, Any]) -> None:
        self._job_id = job_id
        self._model = model
        self._body = body
        self._created_at = int(time.time())
        self._sequence = 0
        self._started = False
        self._items: list[Item] = []  # done items, in output order
        self._open: Item | None = None  # the item being streamed
        self._open_call_index: int | None = None

    def keepalive(self) -> bytes:
        """An SSE comment while the call waits in line for a slot."""
        return b": waiting for a slot\n\n"

    def use_model(self, model: str) -> None:
        self._model = model

    def _event(self, kind: str, body: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **body}
        self._sequence += 1
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        return f"event: {kind}\ndata: {text}\n\n".encode()

    def _response(self, status: str, **more: Any) -> dict[str, Any]:
        return response_object(
            self._job_id,
            self._model,
            self._body,
            status=status,
            output=list(self._items),
            created_at=self._created_at,
            **more,
        )

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        created = {"response": self._response("in_progress")}
        return self._event("response.created", created) + self._event(
            "response.in_progress", created
        )

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self._items)}

    def _close(self) -> bytes:
        item = self._open
        if item is None:
            return b""
        where = self._where()
        if item["type"] == "message":
            text = item["content"][0]["text"]
            out = self._event(
                "response.output_text.done", where | {"content_index": 0, "text": text}
            )
            part = {"content_index": 0, "part": text_part(text)}
            out += self._event("response.content_part.done", where | part)
        else:
            done = {"arguments": item["arguments"], "name": item["name"]}
            out = self._event("response.function_call_arguments.done", where | done)
        item["status"] = "completed"
        out += self._event(
            "response.output_item.done", {"output_index": where["output_index"], "item": item}
        )
        self._items.append(item)
        self._open = None
        self._open_call_index = None
        return out

    def _add(self, item: Item) -> bytes:
        out = self._close()
        self._open = {**item, "status": "in_progress"}
        added = {"output_index": len(self._items), "item": self._open | {"content": []}}
        if item["type"] != "message":
            added["item"] = dict(self._open)
        return out + self._event("response.output_item.added", added)

    def _text(self, text: str) -> bytes:
        if not text:
            return b""
        out = b""
        if self._open is None or self._open["type"] != "message":
            out += self._add(
                message_item(f"msg_{self._job_id}_{len(self._items)}", "", "in_progress")
            )
            assert self._open is not None
            self._open["content"] = [text_part("")]
            part = {"content_index": 0, "part": text_part("")}
            out += self._event("response.content_part.added", self._where() | part)
        assert self._open is not None
        self._open["content"][0]["text"] += text
        delta = {"content_index": 0, "delta": text, "logprobs": []}
        return out + self._event("response.output_text.delta", self._where() | delta)

    def _tool(self, piece: ToolCallDelta) -> bytes:
        out = b""
        if self._open_call_index != piece.index or self._open is None:
            call_id = piece.id or f"call_{self._job_id}_{piece.index}"
            out += self._add(call_item(call_id, piece.function.name or "", "", "in_progress"))
            self._open_call_index = piece.index
        assert self._open is not None
        arguments = piece.function.arguments
        if arguments:
            self._open["arguments"] += arguments
            delta = self._where() | {"delta": arguments}
            out += self._event("response.function_call_arguments.delta", delta)
        return out

    def delta(self, piece: Piece) -> bytes:
        out = self._start()
        if isinstance(piece, str):
            return out + self._text(piece)
        for call in piece:
            out += self._tool(call)
        return out

    def final(self, response: JobResponse, _route: Route) -> bytes:
        if response.model:
            self._model = response.model
        if response.error is not None:
            out = self._start() + self._close()
            code, message = response.error.code, response.error.message
            out += self._event("error", {"code": code.value, "message": message, "param": None})
            failure = {"code": response_error_code(code), "message": message}
            return out + self._event(
                "response.failed", {"response": self._response("failed", error=failure)}
            )
        out = self._start()
        if not self._items and self._open is None:  # nothing streamed (a replay): all now
            out += self._whole(response)
        out += self._close()
        status = status_of(response)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(
            kind, {"response": self._response(status, usage=usage_body(response))}
        )

    def _whole(self, response: JobResponse) -> bytes:
        result = response.result
        text = result.text if result else ""
        calls: list[ToolCall] = (result.tool_calls if result else None) or []
        out = b""
        if text or not calls:
            out += self._text(text) if text else self._empty_message()
        for at, call in enumerate(calls):
            out += self._tool(ToolCallDelta.whole(at, call))
        return out

    def _empty_message(self) -> bytes:
        out = self._add(message_item(f"msg_{self._job_id}_0", "", "in_progress"))
        assert self._open is not None
        self._open["content"] = [text_part("")]
        return out + self._event(
            "response.content_part.added",
            self._where() | {"content_index": 0, "part": text_part("")},
        )
