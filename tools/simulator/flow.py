"""The life of one generation request, common to every wire format.

count the call → parse → apply any armed fault → plan → wait the latency → answer in one
body or as a stream. A `WireFormat` supplies parsing and rendering; everything about
timing, faults and connection handling lives here once, so both formats fail alike.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from tools.simulator.faults import Fault
from tools.simulator.plan import (
    GenRequest,
    Plan,
    Rejection,
    plan_generation,
    rejection_for_fault,
)
from tools.simulator.state import SimState

STATE_KEY: web.AppKey[SimState] = web.AppKey("simulator_state", SimState)
JSON_HEADERS: dict[str, str] = {"Content-Type": "application/json; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Timings:
    """Monotonic nanosecond marks of one request, for Ollama's duration metrics."""

    started_ns: int
    planned_ns: int
    first_token_ns: int


class StreamEncoder(Protocol):
    """Encodes one stream's events; holds what every chunk repeats (id, model, ...)."""

    def open(self) -> bytes:
        """Bytes sent right after the headers (b"" for none)."""
        ...

    def piece(self, text: str) -> bytes: ...

    def tool_call_events(self, plan: Plan) -> list[bytes]:
        """The plan's tool calls as events of their own, sent one token interval apart
        after the text (as OpenAI-compatible servers stream arguments); [] where the
        format sends its calls with `close`."""
        ...

    def close(self, plan: Plan, timings: Timings) -> bytes:
        """The final chunk(s): finish reason, usage, terminator."""
        ...

    def error(self) -> bytes:
        """An in-band error once the body has started (the status is already 200)."""
        ...


class WireFormat(Protocol):
    """One API's parsing and rendering of generation requests."""

    stream_headers: dict[str, str]

    def parse(self, payload: dict[str, Any]) -> GenRequest | Rejection: ...

    def reject(self, rejection: Rejection, model: str) -> web.Response: ...

    def complete(self, request: GenRequest, plan: Plan, timings: Timings) -> web.Response: ...

    def encoder(self, request: GenRequest) -> StreamEncoder: ...


_compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON, like Go's encoder and most runtimes emit it."""
    return _compact_json(value).encode()


def json_response(status: int, value: Any) -> web.Response:
    return web.Response(status=status, body=json_bytes(value), headers=JSON_HEADERS)


def read_json_object(raw: bytes) -> dict[str, Any] | Rejection:
    """The request body as a JSON object, or why it is not one."""
    if not raw.strip():
        return Rejection("bad_request", "missing request body")
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        return Rejection("bad_request", f"invalid JSON body: {exc}")
    if not isinstance(payload, dict):
        return Rejection("bad_request", "request body must be a JSON object")
    return payload


async def serve_generation(request: web.Request, wire: WireFormat) -> web.StreamResponse:
    """Handle one generation request end to end; counts it and tracks it as open."""
    state = request.app[STATE_KEY]
    started_ns = time.perf_counter_ns()
    traceparent = request.headers.get("traceparent")
    if traceparent:
        state.traceparents.append(traceparent)
    payload = read_json_object(await request.read())
    model_name = ""
    if isinstance(payload, dict):
        named = payload.get("model")
        if isinstance(named, str):
            model_name = named
            state.calls[named] += 1
    state.open_connections += 1
    state.peak_connections = max(state.peak_connections, state.open_connections)
    try:
        if isinstance(payload, Rejection):
            return wire.reject(payload, model_name)
        parsed = wire.parse(payload)
        if isinstance(parsed, Rejection):
            return wire.reject(parsed, model_name)
        return await _answer(request, state, wire, parsed, started_ns)
    finally:
        state.open_connections -= 1


async def _answer(
    request: web.Request,
    state: SimState,
    wire: WireFormat,
    parsed: GenRequest,
    started_ns: int,
) -> web.StreamResponse:
    model = state.models.get(parsed.model)
    mid_stream: Fault | None = None
    fault = state.faults.take(parsed.model) if state.faults else None
    if fault is not None:
        if await state.pause(fault.delay_ms / 1000):
            return drop_connection(request)
        if fault.kind == "hang":
            await state.stopping.wait()
            return drop_connection(request)
        strikes_mid_stream = parsed.stream and fault.after_chunks > 0
        if fault.kind == "drop" and not strikes_mid_stream:
            return drop_connection(request)
        if fault.kind in ("drop", "error") and strikes_mid_stream:
            mid_stream = fault
        elif fault.kind in ("error", "not_found", "context_exceeded", "bad_request"):
            return wire.reject(rejection_for_fault(fault.kind, parsed, model), parsed.model)

    outcome = plan_generation(parsed, model, state.tokens)
    if isinstance(outcome, Rejection):
        return wire.reject(outcome, parsed.model)
    planned_ns = time.perf_counter_ns()
    if state.latency_ms > 0 and await state.pause(state.latency_ms / 1000):
        return drop_connection(request)
    timings = Timings(started_ns, planned_ns, time.perf_counter_ns())
    if not parsed.stream:
        return wire.complete(parsed, outcome, timings)
    return await _stream(request, state, wire, parsed, outcome, timings, mid_stream)


async def _stream(
    request: web.Request,
    state: SimState,
    wire: WireFormat,
    parsed: GenRequest,
    plan: Plan,
    timings: Timings,
    mid_stream: Fault | None,
) -> web.StreamResponse:
    response = web.StreamResponse(headers=wire.stream_headers)
    encoder = wire.encoder(parsed)
    await response.prepare(request)
    opening = encoder.open()
    if opening:
        await response.write(opening)
    strike_at = mid_stream.after_chunks if mid_stream is not None else -1
    interval_s = state.token_interval_ms / 1000
    for index, piece in enumerate(plan.pieces):
        if index == strike_at:
            return await _strike(request, response, encoder, mid_stream)
        if index and interval_s > 0 and await state.pause(interval_s):
            return drop_connection(request, response)
        await response.write(encoder.piece(piece))
    for event in encoder.tool_call_events(plan):
        if interval_s > 0 and await state.pause(interval_s):
            return drop_connection(request, response)
        await response.write(event)
    if strike_at >= len(plan.pieces):
        return await _strike(request, response, encoder, mid_stream)
    await response.write(encoder.close(plan, timings))
    await response.write_eof()
    return response


async def _strike(
    request: web.Request,
    response: web.StreamResponse,
    encoder: StreamEncoder,
    fault: Fault | None,
) -> web.StreamResponse:
    """End a started stream the way ``fault`` says: cut the connection or report an error."""
    if fault is not None and fault.kind == "error":
        await response.write(encoder.error())
        await response.write_eof()
        return response
    return drop_connection(request, response)


def drop_connection(
    request: web.Request, response: web.StreamResponse | None = None
) -> web.StreamResponse:
    """Close the TCP connection without (the rest of) a response.

    Bytes already written are flushed first, so a client sees exactly the chunks sent so
    far followed by a connection error. aiohttp silently discards the returned response
    because its transport is closing.
    """
    if request.transport is not None:
        request.transport.close()
    return response if response is not None else web.Response()


def duration_metrics(timings: Timings) -> dict[str, int]:
    """Ollama's nanosecond durations, measured; never zero so none is omitted."""
    finished_ns = time.perf_counter_ns()
    return {
        "total_duration": max(1, finished_ns - timings.started_ns),
        "load_duration": max(1, timings.planned_ns - timings.started_ns),
        "prompt_eval_duration": max(1, timings.first_token_ns - timings.planned_ns),
        "eval_duration": max(1, finished_ns - timings.first_token_ns),
    }
