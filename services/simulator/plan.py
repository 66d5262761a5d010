"""What to answer to a generation request: a pure decision, shared by both wire formats.

Each wire format parses its own body into a `GenRequest`; `plan_generation` then decides,
without I/O, whether the request is rejected (and why) or which tokens it gets. The formats
only render the outcome, so Ollama and OpenAI behave identically by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.simulator.models import SimModel, token_pieces

RejectionKind = Literal["bad_request", "not_found", "no_vision", "context_exceeded", "error"]
FinishReason = Literal["stop", "length", "load"]


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
    """

    model: str
    prompt_text: str
    prompt_tokens: int
    has_images: bool = False
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    load_only: bool = False


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

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

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
    if request.prompt_tokens > model.context_window:
        return Rejection(
            "context_exceeded",
            prompt_tokens=request.prompt_tokens,
            context_window=model.context_window,
        )
    if request.load_only:
        return Plan((), "load", 0)
    if request.max_tokens is not None and request.max_tokens < tokens:
        capped = token_pieces(request.model, request.prompt_text, request.max_tokens)
        return Plan(capped, "length", request.prompt_tokens)
    pieces = token_pieces(request.model, request.prompt_text, tokens)
    return Plan(pieces, "stop", request.prompt_tokens)


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
