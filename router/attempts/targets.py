"""What a request can be sent to: the `Target` protocol every kind of target implements.

    Target: label, reason, attempt(asked) -> Outcome
    ├── NodeTarget        a fleet node, over NATS                router/serving/node_target.py
    ├── RuntimeTarget     a runtime over HTTP, no node between   router/attempts/runtime_target.py
    │                     "local": the router node's own runtime (works while NATS is down)
    │                     "static": a profile's static `base_url`
    └── CloudChainTarget  a chain of cloud (provider, key, model)s   router/cloud/targets.py

A target makes its calls, writes what they say about health to the health board
(router/attempts/health.py), and ends as one `Outcome` (router/attempts/decision.py) that
carries one `Attempt` record per call (router/attempts/route.py). The dispatcher
(router/serving/dispatch.py) decides what comes next with `next_action` and writes the
route; it never asks what kind a target is. A new kind of target is one module
implementing `Target`, and a line in the dispatcher's order.

Also here, for every target that talks to a runtime: the call a job means (`call_of`),
the reply as the job's answer (`answer_of`), and the one way a runtime stream is relayed
(`stream_pieces`: text and tool-call deltas to the same sink, so no target can drop one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

from router.attempts.decision import Outcome
from services.runtimes.base import ChatCall, ChatReply, Runtime
from services.runtimes.calls import clean_text, stream_within
from services.wire import JobRequest, JobResponse, ModelSink, PieceSink, Result, Timings

__all__ = [
    "Asked",
    "Target",
    "answer_of",
    "call_of",
    "result_of",
    "stream_pieces",
]


class Asked(Protocol):
    """One request as every target sees it (the dispatcher's request satisfies it)."""

    @property
    def job(self) -> JobRequest: ...

    @property
    def deadline(self) -> float:
        """When the answer is due, on the router's clock (the targets' clock)."""
        ...

    @property
    def on_piece(self) -> PieceSink | None:
        """With a stream: where each piece goes as it is produced."""
        ...

    @property
    def on_model(self) -> ModelSink | None:
        """Hears the model of a target before its first piece."""
        ...

    @property
    def trace(self) -> Mapping[str, str]:
        """The W3C trace context this attempt sends on (`traceparent`, `tracestate`;
        empty when there is none): in a node's job, in a runtime's HTTP headers."""
        ...


class Target(Protocol):
    """Something one request can be sent to."""

    @property
    def label(self) -> str:
        """What logs call it: the node's id, "local", "static", "cloud"."""
        ...

    @property
    def reason(self) -> str:
        """Why the request came here, for the route's `fallback_reason` when it answers
        ("" for a fleet node: selection's reason says it)."""
        ...

    async def attempt(self, asked: Asked) -> Outcome:
        """Call the target within the request's deadline; never raises but for
        cancellation. The outcome carries an `Attempt` record per call made."""
        ...


def call_of(job: JobRequest, model: str, *, drop_max_tokens: bool = False) -> ChatCall:
    """The runtime call a job means, for `model`: every field of it (`ChatCall.of`: tools,
    response_format, extra, raw prompts...), without max_tokens when told to."""
    call = ChatCall.of(model, job)
    if not drop_max_tokens:
        return call
    params = job.params.model_copy(update={"max_tokens": None, "max_completion_tokens": None})
    return dataclasses.replace(call, params=params)


def result_of(reply: ChatReply) -> Result:
    """A runtime's reply as the job's result: text, tool calls, logprobs."""
    return Result(
        text=clean_text(reply.text),
        finish_reason=reply.finish_reason,
        usage=reply.usage,
        tool_calls=reply.tool_calls,
        logprobs=reply.logprobs,
        stop_sequence=reply.stop_sequence,
    )


def answer_of(
    job: JobRequest,
    reply: ChatReply | Result,
    *,
    model: str,
    runtime: str,
    node: str | None,
    elapsed_ms: float,
    done: bool | None,
) -> JobResponse:
    """A runtime's reply (or an embed job's result) as the job's answer."""
    return JobResponse(
        job_id=job.job_id,
        status="ok",
        node_id=node,
        model=model,
        runtime=runtime,
        result=reply if isinstance(reply, Result) else result_of(reply),
        timings=_timings(reply, elapsed_ms),
        done=done,
    )


def _timings(reply: ChatReply | Result, elapsed_ms: float) -> Timings:
    """The call's time, and the runtime's own split of it when it reported one."""
    split = reply.timings if isinstance(reply, ChatReply) else None
    if split is None:
        return Timings(backend_ms=elapsed_ms, total_ms=elapsed_ms)
    return Timings(
        backend_ms=elapsed_ms,
        total_ms=elapsed_ms,
        load_ms=split.load_ms,
        prompt_ms=split.prompt_ms,
        eval_ms=split.eval_ms,
    )


async def stream_pieces(
    runtime: Runtime, call: ChatCall, left_s: float, on_piece: PieceSink
) -> ChatReply:
    """Stream `call` within `left_s`: every piece, text and tool-call deltas alike, goes to
    `on_piece` as it arrives; returns the whole reply (raises InferbusError)."""
    return await stream_within(runtime, call, left_s, on_piece, on_tool_calls=on_piece)
