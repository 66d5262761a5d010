"""Everything a request can be sent to, and how a runtime target is attempted.

    Target
    ├── NodeTarget     a fleet node, over NATS (attempted by `router/serving/node_link.py`)
    ├── RuntimeTarget  a runtime over HTTP, no node in between:
    │                  "local"  — the router node's own runtime (works while NATS is down)
    │                  "static" — a profile's static `base_url`
    └── CloudChainTarget  a chain of cloud (provider, key, model)s, walked by
                       `router/cloud/targets.py` with cooldowns on the cloud health board

Each attempt ends as an `Outcome` (`router/attempts/decision.py`); what happens next is decided
there, not here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from router.attempts.decision import Outcome
from router.cloud.providers import CloudModel
from services.errors import InferbusError
from services.runtimes.base import ChatCall, ChatReply, EmbedCall, Runtime
from services.runtimes.calls import chat_within, clean_text, embed_within, stream_within
from services.wire import JobRequest, JobResponse, JobType, Piece, Result, Timings

Sink = Callable[[Piece], Awaitable[None]]


@dataclass(frozen=True)
class NodeTarget:
    node: str
    model: str
    job_type: JobType
    slot_type: str  # the served model's type: which of the node's slots the job takes

    @property
    def label(self) -> str:
        return self.node


@dataclass(frozen=True)
class RuntimeTarget:
    via: Literal["local", "static"]
    runtime: Runtime
    model: str
    node: str | None  # the router's local node, for `route`
    reason: str  # why the request came here (fallback_reason)

    @property
    def label(self) -> str:
        return self.via


@dataclass(frozen=True)
class CloudChainTarget:
    """The request's cloud chain: each (provider, key, model) in it is tried in turn, and
    failing over between them is the chain's own decision (router/cloud/actions.py)."""

    chain: tuple[CloudModel, ...]
    reason: str  # why the request came here (fallback_reason)

    @property
    def model(self) -> str:
        return self.chain[0].model

    @property
    def label(self) -> str:
        return "cloud"


Target = NodeTarget | RuntimeTarget | CloudChainTarget


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


async def attempt_runtime(
    target: RuntimeTarget, job: JobRequest, left_s: float, on_delta: Sink | None
) -> Outcome:
    """One call to a runtime over HTTP within `left_s` (the caller's remaining budget).

    The call carries every field of the job (`ChatCall.of`: tools, response_format,
    extra...); an embed job calls the runtime's embeddings endpoint instead."""
    started = time.perf_counter()
    delivered = 0

    async def counted(piece: Piece) -> None:
        nonlocal delivered
        delivered += 1
        assert on_delta is not None
        await on_delta(piece)

    done = True if on_delta is not None else None
    try:
        result = await _run(target, job, left_s, counted if on_delta is not None else None)
    except InferbusError as error:
        failure = JobResponse.failure(
            job.job_id, error, model=target.model, runtime=target.runtime.kind, done=done
        )
        return Outcome(
            failure,
            "answered",
            delivered,  # a runtime target always has the caller's whole remaining budget
            elapsed_ms=_ms(started),
        )
    elapsed = _ms(started)
    answer = answer_of(
        job,
        result,
        model=target.model,
        runtime=target.runtime.kind,
        node=target.node,
        elapsed_ms=elapsed,
        done=done,
    )
    return Outcome(answer, "answered", delivered, elapsed_ms=elapsed)


async def _run(
    target: RuntimeTarget, job: JobRequest, left_s: float, on_delta: Sink | None
) -> Result:
    if job.type == "embed":
        call = EmbedCall(target.model, job.embed_inputs(), job.params.dimensions, job.extra)
        embedded = await embed_within(target.runtime, call, left_s)
        return Result(finish_reason="stop", usage=embedded.usage, embeddings=embedded.vectors)
    chat = call_of(job, target.model)
    if on_delta is None:
        reply = await chat_within(target.runtime, chat, left_s)
    else:
        reply = await stream_within(target.runtime, chat, left_s, on_delta, on_tool_calls=on_delta)
    return result_of(reply)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
