"""What every runtime adapter offers, in our own types.

One adapter per wire protocol (Ollama, OpenAI-compatible), not per product. Adapters are
the HTTP edge: they translate httpx errors and the runtime's own error bodies into
`InferbusError` codes, so nothing above them sees `httpx.*`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from services.wire import JobRequest, Message, Params, Usage
from services.wire_features import ResponseFormat, Tool, ToolCall, ToolCallDelta, ToolChoice

RuntimeKind = Literal["ollama", "openai", "vllm", "llamacpp", "lmstudio"]
RUNTIME_KINDS: tuple[RuntimeKind, ...] = ("ollama", "openai", "vllm", "llamacpp", "lmstudio")


@dataclass(frozen=True)
class ChatCall:
    """One chat completion to run on a runtime."""

    model: str
    messages: list[Message]
    params: Params = field(default_factory=Params)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # A completion of `raw_prompt` (no chat template; `messages` is then ignored) and,
    # for fill-in-the-middle, the text that follows the gap.
    raw_prompt: str | None = None
    suffix: str | None = None
    # The last message is the answer so far, to be continued (assistant prefill).
    continue_final: bool = False

    @classmethod
    def of(cls, model: str, request: JobRequest) -> ChatCall:
        """Everything of a job that the runtime must see."""
        completion = request.raw or request.suffix is not None
        return cls(
            model,
            request.chat_messages(),
            request.params,
            tools=request.tools,
            tool_choice=request.tool_choice,
            parallel_tool_calls=request.parallel_tool_calls,
            response_format=request.response_format,
            extra=request.extra,
            raw_prompt=request.prompt if completion else None,
            suffix=request.suffix,
            continue_final=bool(request.continue_final),
        )


@dataclass(frozen=True)
class RuntimeTimings:
    """How long the runtime says it took, in ms, for the parts it reports (Ollama's
    load/prompt-eval/eval durations, llama.cpp's `timings`); None where it says nothing."""

    load_ms: float | None = None
    prompt_ms: float | None = None
    eval_ms: float | None = None


@dataclass(frozen=True)
class ChatReply:
    text: str
    finish_reason: str | None
    usage: Usage
    # The model the runtime says answered, when it says: a single-model server
    # (llama.cpp's) answers with whatever it has loaded, whatever was asked.
    model: str | None = None
    tool_calls: list[ToolCall] | None = None
    logprobs: dict[str, Any] | None = None
    timings: RuntimeTimings | None = None
    # The caller's stop string that ended the answer, where the runtime says (vLLM).
    stop_sequence: str | None = None


@dataclass(frozen=True)
class StreamDelta:
    """A piece of the answer as the runtime produced it: text, tool-call pieces, or both."""

    text: str
    tool_calls: list[ToolCallDelta] | None = None
    logprobs: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class EmbedCall:
    """Embeddings of `inputs`, one vector each, in order."""

    model: str
    inputs: list[str]
    dimensions: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbedReply:
    vectors: list[list[float]]
    usage: Usage
    timings: RuntimeTimings | None = None


@dataclass(frozen=True)
class StreamEnd:
    """The last event of a stream: why it stopped and what it cost."""

    finish_reason: str | None
    usage: Usage
    model: str | None = None
    timings: RuntimeTimings | None = None
    stop_sequence: str | None = None


StreamEvent = StreamDelta | StreamEnd


@dataclass(frozen=True)
class ModelInfo:
    """A model as the runtime lists it; fields the runtime does not report stay None."""

    name: str
    size_bytes: int | None = None
    running: bool | None = None
    context_window: int | None = None
    family: str | None = None
    capabilities: tuple[str, ...] = ()
    # Other names jobs may use for it (llama.cpp: the GGUF path its id was made from).
    aliases: tuple[str, ...] = ()
    # The id to send the runtime when it differs from `name`.
    runtime_id: str | None = None
    # Jobs its server runs at once, when the server says (llama.cpp: `/props` total_slots).
    parallel: int | None = None
    # The model file as the runtime describes it (Ollama's `/api/tags` details).
    digest: str | None = None
    modified_at: str | None = None
    format: str | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None
    # While loaded (Ollama's `/api/ps`): memory on the GPU and when it will be unloaded.
    size_vram: int | None = None
    expires_at: str | None = None


class Runtime(Protocol):
    """An inference runtime reached over HTTP."""

    kind: RuntimeKind
    url: str

    async def health(self) -> float:
        """Probe the runtime; returns the probe's latency in ms or raises InferbusError."""
        ...

    async def list_models(self) -> list[ModelInfo]: ...

    async def describe(self, model: ModelInfo, *, verbose: bool) -> dict[str, Any] | None:
        """The runtime's own description of a model in Ollama's ShowResponse shape
        (Ollama's `/api/show`), or None when it has none beyond what it listed."""
        ...

    async def chat(self, call: ChatCall, *, timeout_s: float) -> ChatReply: ...

    async def embed(self, call: EmbedCall, *, timeout_s: float) -> EmbedReply: ...

    def stream(self, call: ChatCall, *, timeout_s: float) -> AsyncGenerator[StreamEvent, None]:
        """Yield StreamDelta events as tokens arrive, then exactly one StreamEnd.

        An async generator, so a caller that stops early can `aclose()` it (or use
        `contextlib.aclosing`) and the HTTP connection is closed at once.
        """
        ...
