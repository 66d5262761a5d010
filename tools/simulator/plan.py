"""What to answer to a generation request: a pure decision, shared by both wire formats.

Each wire format parses its own body into a `GenRequest`; `plan_generation` then decides,
without I/O, whether the request is rejected (and why) or which tokens it gets. The formats
only render the outcome, so Ollama and OpenAI behave identically by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tools.simulator.features import (
    SimToolCall,
    ToolSpec,
    choose_tool_calls,
    json_answer,
    json_pieces,
)
from tools.simulator.models import SimModel, token_pieces

RejectionKind = Literal[
    "bad_request", "not_found", "no_vision", "no_tools", "no_chat", "context_exceeded", "error"
]
FinishReason = Literal["stop", "length", "load", "tool_calls"]


@dataclass(frozen=True, slots=True)
class GenRequest:
    """A generation request, whatever its wire format.

    Args:
        model: the model name as sent.
        prompt_text: what the answer is derived from (last user message, or the prompt).
        prompt_tokens: words across all messages, at least 1.
        has_images: whether any image was attached.
        max_tokens: the client's cap on generated tokens, if any.
        stream: whether the client asked for a stream.
        include_usage: OpenAI ``stream_options.include_usage``.
        load_only: Ollama's "load the model" request (no messages / empty prompt).
        tools: the tools offered (none when `tool_choice` is "none").
        forced_tool: a tool the model must call (`"*"`: any; OpenAI `tool_choice`).
        users_turn: the last message is the user's, so a tool call may answer it.
        prefill: a final assistant message to continue (the answer so far); when it is a
            prefix of the answer this request would get without it, the answer is
            exactly the rest, so a resumed stream's seam can be checked to the piece.
        json_mode: answer JSON; `json_schema` is the schema it must match, if any.
        logprobs: the client asked for log probabilities.
        stop: strings that end the answer where one first appears (left out of it).
    """

    model: str
    prompt_text: str
    prompt_tokens: int
    has_images: bool = False
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    load_only: bool = False
    tools: tuple[ToolSpec, ...] = ()
    forced_tool: str | None = None
    users_turn: bool = True
    prefill: str = ""
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None
    logprobs: bool = False
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request gets an error instead of an answer; formats render the body."""

    kind: RejectionKind
    message: str = ""
    prompt_tokens: int = 0
    context_window: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """The answer to send: the pieces, why generation stopped, and what it cost."""

    pieces: tuple[str, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    tool_calls: tuple[SimToolCall, ...] = ()
    logprobs: bool = False
    # The stop string that ended the answer (vLLM says it as `stop_reason`).
    stop_sequence: str | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces) + len(self.tool_calls)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def plan_generation(request: GenRequest, model: SimModel | None, tokens: int) -> Plan | Rejection:
    """Decide the outcome of ``request`` against ``model`` (None: not served here).

    Args:
        request: the parsed request.
        model: the served model of that name, if any.
        tokens: how many tokens an uncapped answer has (the simulator's setting).
    """
    if model is None:
        return Rejection("not_found")
    if request.has_images and not model.vision:
        return Rejection("no_vision")
    if not model.chat and not request.load_only:
        return Rejection("no_chat")
    if request.tools and not model.tools:
        return Rejection("no_tools")
    if request.prompt_tokens > model.context_window:
        return Rejection(
            "context_exceeded",
            prompt_tokens=request.prompt_tokens,
            context_window=model.context_window,
        )
    if request.load_only:
        return Plan((), "load", 0)
    calls = choose_tool_calls(
        request.tools,
        model=request.model,
        last_user_text=request.prompt_text,
        users_turn=request.users_turn,
        forced=request.forced_tool,
    )
    if calls:
        return Plan((), "tool_calls", request.prompt_tokens, calls, request.logprobs)
    if request.json_mode:
        text = json_answer(
            request.json_schema, model=request.model, prompt_text=request.prompt_text
        )
        return Plan(json_pieces(text), "stop", request.prompt_tokens, logprobs=request.logprobs)
    pieces = token_pieces(request.model, request.prompt_text, tokens)
    pieces = pieces[continued_from(pieces, request.prefill) :]
    capped = request.max_tokens is not None and request.max_tokens < len(pieces)
    if capped:
        pieces = pieces[: request.max_tokens]
    stopped = stopped_at(pieces, request.stop)
    if stopped is not None:
        kept, stop = stopped
        return Plan(
            kept, "stop", request.prompt_tokens, logprobs=request.logprobs, stop_sequence=stop
        )
    reason: FinishReason = "length" if capped else "stop"
    return Plan(pieces, reason, request.prompt_tokens, logprobs=request.logprobs)


def stopped_at(
    pieces: tuple[str, ...], stops: tuple[str, ...]
) -> tuple[tuple[str, ...], str] | None:
    """The pieces before the first stop string in their text (the piece it starts in cut
    short, or dropped when nothing of it is left) and that string; None when none appears."""
    text = "".join(pieces)
    found = [(text.find(stop), stop) for stop in stops if stop in text]
    if not found:
        return None
    at, stop = min(found)
    kept: list[str] = []
    held = 0
    for piece in pieces:
        if held + len(piece) >= at:
            if at > held:
                kept.append(piece[: at - held])
            break
        kept.append(piece)
        held += len(piece)
    return tuple(kept), stop


def continued_from(pieces: tuple[str, ...], prefill: str) -> int:
    """How many of `pieces` the prefill already holds: all of them up to a piece boundary,
    or none when the prefill is not a prefix of the answer (the answer starts over)."""
    if not prefill:
        return 0
    held = 0
    for count, piece in enumerate(pieces, start=1):
        held += len(piece)
        if held == len(prefill):
            return count if "".join(pieces[:count]) == prefill else 0
        if held > len(prefill):
            return 0
    return 0


def rejection_for_fault(kind: str, request: GenRequest, model: SimModel | None) -> Rejection:
    """The rejection an ``error`` / ``not_found`` / ``context_exceeded`` / ``bad_request``
    fault produces."""
    if kind == "not_found":
        return Rejection("not_found")
    if kind == "bad_request":
        return Rejection("bad_request", "illegal base64 data at input byte 4")
    if kind == "context_exceeded":
        return Rejection(
            "context_exceeded",
            prompt_tokens=request.prompt_tokens,
            context_window=model.context_window if model is not None else 0,
        )
    return Rejection("error")
