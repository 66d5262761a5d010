"""One chat call within a job's budget, for every caller (worker, router fallbacks)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from services.errors import ErrorCode, InferbusError
from services.runtimes.base import (
    ChatCall,
    ChatReply,
    EmbedCall,
    EmbedReply,
    Runtime,
    RuntimeTimings,
    StreamEnd,
)
from services.wire_features import ToolCallAssembler, ToolCallDelta

ToolDeltaSink = Callable[[list[ToolCallDelta]], Awaitable[None]]


async def chat_within(runtime: Runtime, call: ChatCall, remaining_s: float) -> ChatReply:
    """The runtime call, cut off at the deadline; every failure is an InferbusError.

    Adapters enforce `timeout_s` themselves; the outer timeout is the never-hang guarantee
    for any adapter, whatever it does.
    """
    if remaining_s <= 0:
        raise InferbusError(ErrorCode.DEADLINE_EXCEEDED, "the job's budget is spent")
    try:
        async with asyncio.timeout(remaining_s):
            return honoured(call, await runtime.chat(call, timeout_s=remaining_s))
    except TimeoutError:
        raise InferbusError(
            ErrorCode.DEADLINE_EXCEEDED,
            f"the runtime did not answer within the job's budget ({remaining_s * 1000:.0f} ms)",
        ) from None


async def embed_within(runtime: Runtime, call: EmbedCall, remaining_s: float) -> EmbedReply:
    """Embeddings within the job's budget; every failure is an InferbusError."""
    if remaining_s <= 0:
        raise InferbusError(ErrorCode.DEADLINE_EXCEEDED, "the job's budget is spent")
    try:
        async with asyncio.timeout(remaining_s):
            reply = await runtime.embed(call, timeout_s=remaining_s)
    except TimeoutError:
        raise InferbusError(
            ErrorCode.DEADLINE_EXCEEDED,
            f"the runtime did not embed within the job's budget ({remaining_s * 1000:.0f} ms)",
        ) from None
    if len(reply.vectors) != len(call.inputs):
        raise InferbusError(
            ErrorCode.BACKEND_ERROR,
            f"the runtime answered {len(reply.vectors)} vectors for {len(call.inputs)} inputs",
        )
    return reply


def honoured(call: ChatCall, reply: ChatReply) -> ChatReply:
    """The reply, unless it silently left out something the job asked for.

    `logprobs` is sent to every runtime; one too old to know it answers without them,
    and that must reach the caller as a refusal, not as an answer missing a field.
    A call with `parallel_tool_calls: false` keeps only the first call (Ollama cannot be
    told; the OpenAI-compatible servers are, and then return one anyway).
    """
    if call.params.logprobs and reply.logprobs is None:
        raise InferbusError(
            ErrorCode.BAD_REQUEST,
            f"params.logprobs: model {call.model!r}'s runtime answered without logprobs",
        )
    if call.parallel_tool_calls is False and reply.tool_calls and len(reply.tool_calls) > 1:
        return dataclasses.replace(reply, tool_calls=reply.tool_calls[:1])
    return reply


def clean_text(text: str) -> str:
    """A lone surrogate from a runtime would make the answer unencodable (and cached so)."""
    return text.encode("utf-8", "replace").decode("utf-8")


async def stream_within(
    runtime: Runtime,
    call: ChatCall,
    remaining_s: float,
    on_delta: Callable[[str], Awaitable[None]],
    on_tool_calls: ToolDeltaSink | None = None,
) -> ChatReply:
    """Stream a chat call, handing each piece of text to `on_delta` as it arrives.

    Tool-call pieces go to `on_tool_calls` (OpenAI-shaped deltas with `index`); without
    one they are only assembled into the answer's `tool_calls`. Returns the whole answer
    once the runtime ends the stream; a stream that breaks, or that the deadline cuts,
    raises InferbusError (the caller ends its stream with it). Cancelling the caller
    closes the runtime connection, so the GPU stops generating.
    """
    if remaining_s <= 0:
        raise InferbusError(ErrorCode.DEADLINE_EXCEEDED, "the job's budget is spent")
    pieces: list[str] = []
    calls = ToolCallAssembler()
    logprobs: list[dict[str, Any]] = []
    clock = time.monotonic  # not the loop's clock: uvloop's ticks in whole milliseconds
    started = clock()
    first_piece: float | None = None
    try:
        async with asyncio.timeout(remaining_s):
            async with contextlib.aclosing(runtime.stream(call, timeout_s=remaining_s)) as events:
                async for event in events:
                    if isinstance(event, StreamEnd):
                        return honoured(
                            call,
                            ChatReply(
                                "".join(pieces),
                                event.finish_reason,
                                event.usage,
                                event.model,
                                tool_calls=calls.calls() or None,
                                logprobs={"content": logprobs} if logprobs else None,
                                timings=event.timings
                                or measured_timings(started, first_piece, clock()),
                                stop_sequence=event.stop_sequence,
                            ),
                        )
                    if first_piece is None:
                        first_piece = clock()
                    if event.logprobs:
                        logprobs.extend(event.logprobs)
                    deltas = event.tool_calls
                    if deltas and call.parallel_tool_calls is False:
                        deltas = [delta for delta in deltas if delta.index == 0]
                    if deltas:
                        calls.add(deltas)
                        if on_tool_calls is not None:
                            await on_tool_calls(deltas)
                    if event.text:
                        text = clean_text(event.text)
                        pieces.append(text)
                        await on_delta(text)
    except TimeoutError:
        raise InferbusError(
            ErrorCode.DEADLINE_EXCEEDED,
            f"the stream did not end within the job's budget ({remaining_s * 1000:.0f} ms)",
        ) from None
    raise InferbusError(ErrorCode.BACKEND_ERROR, "the runtime's stream ended without its end")


def measured_timings(
    started: float, first_piece: float | None, ended: float
) -> RuntimeTimings | None:
    """A stream's split as the worker saw it, for runtimes that report none: until the
    first piece the prompt was read, after it the answer generated."""
    if first_piece is None:
        return None
    return RuntimeTimings(
        prompt_ms=round((first_piece - started) * 1000.0, 3),
        eval_ms=round((ended - first_piece) * 1000.0, 3),
    )
