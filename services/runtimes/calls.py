"""One chat call within a job's budget, for every caller (worker, router fallbacks)."""

from __future__ import annotations

import asyncio

from services.errors import ErrorCode, InferbusError
from services.runtimes.base import ChatCall, ChatReply, Runtime


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
