"""One chat call within a job's budget, for every caller (worker, router fallbacks)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from services.errors import ErrorCode, InferbusError
from services.runtimes.base import ChatCall, ChatReply, Runtime, StreamEnd


async def chat_within(runtime: Runtime, call: ChatCall, remaining_s: float) -> ChatReply:
    """The runtime call, cut off at the deadline; every failure is an InferbusError.

    Adapters enforce `timeout_s` themselves; the outer timeout is the never-hang guarantee
    for any adapter, whatever it does.
    """
    if remaining_s <= 0:
        raise InferbusError(ErrorCode.DEADLINE_EXCEEDED, "the job's budget is spent")
    try:
        async with asyncio.timeout(remaining_s):
            return await runtime.chat(call, timeout_s=remaining_s)
    except TimeoutError:
        raise InferbusError(
            ErrorCode.DEADLINE_EXCEEDED,
            f"the runtime did not answer within the job's budget ({remaining_s * 1000:.0f} ms)",
        ) from None


def clean_text(text: str) -> str:
    """A lone surrogate from a runtime would make the answer unencodable (and cached so)."""
    return text.encode("utf-8", "replace").decode("utf-8")


async def stream_within(
    runtime: Runtime,
    call: ChatCall,
    remaining_s: float,
    on_delta: Callable[[str], Awaitable[None]],
) -> ChatReply:
    """Stream a chat call, handing each piece of text to `on_delta` as it arrives.

    Returns the whole answer once the runtime ends the stream; a stream that breaks, or
    that the deadline cuts, raises InferbusError (the caller ends its stream with it).
    Cancelling the caller closes the runtime connection, so the GPU stops generating.
    """
    if remaining_s <= 0:
        raise InferbusError(ErrorCode.DEADLINE_EXCEEDED, "the job's budget is spent")
    pieces: list[str] = []
    try:
        async with asyncio.timeout(remaining_s):
            async with contextlib.aclosing(runtime.stream(call, timeout_s=remaining_s)) as events:
                async for event in events:
                    if isinstance(event, StreamEnd):
                        return ChatReply(
                            "".join(pieces), event.finish_reason, event.usage, event.model
                        )
                    text = clean_text(event.text)
                    pieces.append(text)
                    await on_delta(text)
    except TimeoutError:
        raise InferbusError(
            ErrorCode.DEADLINE_EXCEEDED,
            f"the stream did not end within the job's budget ({remaining_s * 1000:.0f} ms)",
        ) from None
    raise InferbusError(ErrorCode.BACKEND_ERROR, "the runtime's stream ended without its end")
