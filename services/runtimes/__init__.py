"""Runtime adapters: one per wire protocol, all behind the `Runtime` protocol.

    client = new_http_client()                      # one per process, shared
    runtime = make_runtime("vllm", "http://gpu-a:8000", client)
    reply = await runtime.chat(ChatCall("llama3:8b", messages), timeout_s=30)
    async with contextlib.aclosing(runtime.stream(call, timeout_s=30)) as events:
        async for event in events: ...              # StreamDelta..., then one StreamEnd

Every failure leaves an adapter as `InferbusError` (see `services.runtimes.errors`).
"""

from __future__ import annotations

import httpx

from services.runtimes.base import (
    RUNTIME_KINDS,
    ChatCall,
    ChatReply,
    ModelInfo,
    Runtime,
    RuntimeKind,
    StreamDelta,
    StreamEnd,
    StreamEvent,
)
from services.runtimes.errors import classify_http_error, classify_transport_error
from services.runtimes.http import new_http_client
from services.runtimes.ollama import OllamaRuntime
from services.runtimes.openai_compat import OpenAICompatRuntime

__all__ = [
    "RUNTIME_KINDS",
    "ChatCall",
    "ChatReply",
    "ModelInfo",
    "OllamaRuntime",
    "OpenAICompatRuntime",
    "Runtime",
    "RuntimeKind",
    "StreamDelta",
    "StreamEnd",
    "StreamEvent",
    "classify_http_error",
    "classify_transport_error",
    "make_runtime",
    "new_http_client",
]


_OPENAI_COMPATIBLE: dict[str, RuntimeKind] = {
    "openai": "openai",
    "vllm": "vllm",
    "llamacpp": "llamacpp",
    "lmstudio": "lmstudio",
}


def make_runtime(
    kind: RuntimeKind | str,
    url: str,
    client: httpx.AsyncClient,
    *,
    api_key: str | None = None,
) -> Runtime:
    """The adapter for a configured backend: Ollama's own API, or OpenAI-compatible."""
    if kind == "ollama":
        return OllamaRuntime(url, client, api_key=api_key)
    openai_kind = _OPENAI_COMPATIBLE.get(kind)
    if openai_kind is not None:
        return OpenAICompatRuntime(openai_kind, url, client, api_key=api_key)
    raise ValueError(f"unknown runtime kind {kind!r}; expected one of {', '.join(RUNTIME_KINDS)}")
