"""Streaming answers over HTTP: OpenAI's SSE chunks and native NDJSON.

Serving the call hands each piece to a queue the moment it arrives; the response
relays the queue without buffering. The HTTP status is decided by the first event: an
error before any token is a plain JSON error (the caller never sees a broken stream),
after the first token the stream ends with an error event. A client that goes away
cancels the serving, which cancels the job on the node.

A stream that waits in the router's line for a slot hears a keep-alive every
`admission.keepalive_ms` (an SSE comment; on `/infer`'s NDJSON a `{"job_id", "waiting":
true, "queue_ms"}` line, which has neither `delta` nor `done`), so proxies do not cut it:
the first one commits the answer to a 200 stream, and a failure after it is the stream's
error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from router.attempts.route import Route
from router.http.edge import cached_headers
from router.serving.call import Call, Served
from services.errors import ErrorCode, InferbusError
from services.wire import JobResponse, Piece, Thinking

log = logging.getLogger("inferbus.router.http")

INTERNAL_MESSAGE = "the router failed on this request (it is logged); please retry"

Serve = Callable[[Call], Awaitable[Served]]


class StreamFormat(Protocol):
    """How a dialect writes a stream: each piece, then the final event(s)."""

    media_type: str

    def use_model(self, model: str) -> None:
        """The model actually serving the stream, known once its target is chosen."""

    def delta(self, piece: Piece) -> bytes:
        """A piece as the stream sends it (b"": the form has no place for it)."""
        ...

    def keepalive(self) -> bytes:
        """What the stream sends while it waits in line (b"": nothing)."""
        ...

    def final(self, response: JobResponse, route: Route) -> bytes: ...


class _KeepAlive:
    """A queue item: the stream waits in line (not a piece of the answer)."""


KEEPALIVE = _KeepAlive()
Item = Piece | _KeepAlive | None  # None: the answer is in


def sse(body: object) -> bytes:
    """One server-sent event carrying `body` as compact JSON."""
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def usage_body(response: JobResponse) -> dict[str, int]:
    """OpenAI's `usage` object from an answer (zeros when it has no result)."""
    usage = response.result.usage if response.result else None
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def stream_error(response: JobResponse) -> bytes:
    """The event that ends a stream broken after its first piece (OpenAI's error shape)."""
    assert response.error is not None
    error = {
        "message": response.error.message,
        "type": "api_error",
        "code": response.error.code.value,
    }
    return sse({"error": error})


class SseChunks:
    """OpenAI's server-sent stream: `data: {<object>}` events, a finish event, a usage
    event with no choices when `stream_options.include_usage`, then `[DONE]`. Each
    dialect says how one piece and the finish look (`_piece_choice`, `_finish_choice`)."""

    media_type = "text/event-stream"
    object_name = ""
    id_prefix = ""

    def __init__(self, job_id: str, model: str | None, include_usage: bool) -> None:
        self._id = f"{self.id_prefix}-{job_id}"
        self._model = model or ""
        self._created = int(time.time())
        self._include_usage = include_usage

    def use_model(self, model: str) -> None:
        """The model actually serving the stream, known once its target is chosen."""
        self._model = model

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self._id,
            "object": self.object_name,
            "created": self._created,
            "model": self._model,
            "choices": choices,
            **extra,
        }
        return sse(body)

    def _piece_choice(self, piece: Piece) -> dict[str, Any]:
        raise NotImplementedError

    def _finish_choice(self, finish: str) -> dict[str, Any]:
        raise NotImplementedError

    def delta(self, piece: Piece) -> bytes:
        return self._event([self._piece_choice(piece)])

    def keepalive(self) -> bytes:
        return b": waiting for a slot\n\n"

    def final(self, response: JobResponse, route: Route) -> bytes:
        if response.model:
            self._model = response.model
        if response.error is not None:
            return stream_error(response)
        result = response.result
        finish = (result.finish_reason if result else None) or "stop"
        out = self._event([self._finish_choice(finish)], route=route.model_dump())
        if self._include_usage:
            out += self._event([], usage=usage_body(response))
        return out + SSE_DONE


class OpenAIChunks(SseChunks):
    """Chat: text pieces become `delta.content`, tool-call pieces `delta.tool_calls` (each
    with its `index`, as OpenAI streams them), reasoning `delta.reasoning_content` (as
    vLLM, llama.cpp's server and DeepSeek send it); the first chunk also says
    `role: assistant`."""

    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def __init__(self, job_id: str, model: str | None, include_usage: bool) -> None:
        super().__init__(job_id, model, include_usage)
        self._first = True

    def _piece_choice(self, piece: Piece) -> dict[str, Any]:
        delta: dict[str, Any]
        if isinstance(piece, str):
            delta = {"content": piece}
        elif isinstance(piece, Thinking):
            delta = {"reasoning_content": piece.text}
        else:
            delta = {"tool_calls": [call.model_dump(exclude_none=True) for call in piece]}
        if self._first:
            delta = {"role": "assistant", **delta}
            self._first = False
        return {"index": 0, "delta": delta, "finish_reason": None}

    def _finish_choice(self, finish: str) -> dict[str, Any]:
        return {"index": 0, "delta": {}, "finish_reason": finish}


class NdjsonLines:
    """One `{"job_id", "seq", "delta"}` line per delta, then the final answer with `route`;
    while the call waits in line, `{"job_id", "waiting": true, "queue_ms"}` lines (how
    long it has waited so far)."""

    media_type = "application/x-ndjson"

    def __init__(self, job_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._job_id = job_id
        self._seq = 0
        self._clock = clock
        self._since = clock()

    def use_model(self, model: str) -> None:
        """The final answer names the model: nothing to change before it."""

    def keepalive(self) -> bytes:
        queue_ms = round((self._clock() - self._since) * 1000.0, 1)
        line = {"job_id": self._job_id, "waiting": True, "queue_ms": queue_ms}
        return json.dumps(line, separators=(",", ":")).encode() + b"\n"

    def delta(self, piece: Piece) -> bytes:
        self._seq += 1
        line: dict[str, Any] = {"job_id": self._job_id, "seq": self._seq}
        if isinstance(piece, str):
            line["delta"] = piece
        elif isinstance(piece, Thinking):
            line["delta"] = ""
            line["thinking"] = piece.text
        else:
            line["delta"] = ""
            line["tool_calls"] = [call.model_dump(exclude_none=True) for call in piece]
        return json.dumps(line, separators=(",", ":")).encode() + b"\n"

    def final(self, response: JobResponse, route: Route) -> bytes:
        body = response.model_dump(mode="json", exclude_none=True) | {"route": route.model_dump()}
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


async def stream_response(
    serve: Serve,
    call: Call,
    form: StreamFormat,
    on_error_before_first_token: Callable[[JobResponse, Route], Response],
    on_finished: Callable[[JobResponse, Route], None],
) -> Response:
    """Serve `call` as a stream in `form` once the first piece is in, else answer as
    `on_error_before_first_token`."""
    pieces: asyncio.Queue[Item] = asyncio.Queue()
    task = asyncio.create_task(_serve_then_end(serve, call, form, pieces))
    try:
        first = await pieces.get()
        while isinstance(first, _KeepAlive) and not form.keepalive():
            first = await pieces.get()  # nothing to send while waiting: stay uncommitted
    except asyncio.CancelledError:
        task.cancel()
        raise
    if first is None:
        response, route = await task
        on_finished(response, route)
        if response.error is not None:
            return on_error_before_first_token(response, route)
        return RelayResponse(
            _once(form.final(response, route)),
            media_type=form.media_type,
            headers=cached_headers(response),
        )
    # A replayed answer hands over its pieces without waiting on anything, so by the time
    # its first piece is read here its answer is in, and the headers can say it is a replay.
    answered = task.done() and not task.cancelled() and task.exception() is None
    headers = cached_headers(task.result()[0]) if answered else {}
    return RelayResponse(
        _relay(first, pieces, task, form, on_finished, call.job.job_id),
        media_type=form.media_type,
        headers=headers,
    )


class RelayResponse(StreamingResponse):
    """A stream written from the request's own task, its first bytes at once: Starlette's
    `StreamingResponse` (under uvicorn's ASGI 2.3) opens an anyio task group and a second
    task per stream to hear the client leave. Here a plain task waits for the disconnect
    and cancels the writing, whose `_relay` then cancels the job."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = asyncio.current_task()
        assert writer is not None
        gone = done = False  # done: written to the end (uvicorn then says "disconnect" too)

        async def hear_disconnect() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not done:
                gone = True
                writer.cancel()

        listener = asyncio.ensure_future(hear_disconnect())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not gone:
                raise
            writer.uncancel()  # the client left: nothing more to write, nobody to tell
        finally:
            done = True
            listener.cancel()


async def _serve_then_end(
    serve: Serve, call: Call, form: StreamFormat, queue: asyncio.Queue[Item]
) -> Served:
    """Serve the call, feeding its pieces to `queue`; None goes in after the last one."""

    async def put(piece: Piece) -> None:
        queue.put_nowait(piece)

    async def waiting() -> None:
        queue.put_nowait(KEEPALIVE)

    try:
        return await serve(call.streamed_to(put, form.use_model).waiting_with(waiting))
    finally:
        queue.put_nowait(None)


def _bytes_of(item: Piece | _KeepAlive, form: StreamFormat) -> bytes:
    return form.keepalive() if isinstance(item, _KeepAlive) else form.delta(item)


async def _relay(
    first: Piece | _KeepAlive,
    queue: asyncio.Queue[Item],
    task: asyncio.Task[Served],
    form: StreamFormat,
    on_finished: Callable[[JobResponse, Route], None],
    job_id: str,
) -> AsyncIterator[bytes]:
    """Relay deltas as they come; what is already queued goes out in one write."""
    try:
        out = _bytes_of(first, form)
        while True:
            ended = False
            while not queue.empty():
                item = queue.get_nowait()
                if item is None:
                    ended = True
                    break
                out += _bytes_of(item, form)
            if not ended:
                if out:  # a form may have nothing to say of a piece
                    yield out
                item = await queue.get()
                if item is not None:
                    out = _bytes_of(item, form)
                    continue
                out = b""
            response, route = await _served(task, job_id)
            on_finished(response, route)
            yield out + form.final(response, route)
            return
    finally:
        if not task.done():  # the client went away: stop the job on the node
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _served(task: asyncio.Task[Served], job_id: str) -> Served:
    """How the call was served; a stream already under way ends with an INTERNAL error
    event when serving failed unexpectedly (logged once, with its stack)."""
    try:
        return await task
    except Exception:
        log.exception("serving a stream failed unexpectedly")
        internal = InferbusError(ErrorCode.INTERNAL, INTERNAL_MESSAGE)
        return JobResponse.failure(job_id, internal), Route()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
