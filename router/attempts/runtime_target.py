"""A runtime over HTTP as a target, no node in between: the router node's own runtime
("local", which works while NATS is down) or a profile's static `base_url` ("static").

Adapters are built once, where the router is wired (router/service.py): the local
runtime's, and one per static endpoint the configuration names (`StaticRuntimes`), never
one per request. They share the router's one HTTP client, which the service closes at stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import httpx

from router.attempts.decision import Outcome
from router.attempts.route import Attempt, elapsed_ms
from router.attempts.targets import Asked, answer_of, call_of, result_of, stream_pieces
from router.selection.profiles import SelectionConfig
from services.errors import InferbusError
from services.runtimes import make_runtime
from services.runtimes.base import EmbedCall, Runtime, RuntimeKind
from services.runtimes.calls import chat_within, embed_within
from services.wire import JobRequest, JobResponse, Piece, PieceSink, Result

__all__ = ["RuntimeTarget", "StaticRuntimes", "static_kind"]

# (runtime kind, base_url, the environment variable holding its key)
StaticEndpoint = tuple[RuntimeKind, str, str | None]


@dataclass(frozen=True, slots=True)
class RuntimeTarget:
    via: Literal["local", "static"]
    runtime: Runtime
    model: str
    node: str | None  # the router's local node: the answer's `node_id` when it answers
    reason: str  # why the request came here (fallback_reason)
    clock: Callable[[], float] = time.monotonic  # the deadline's clock

    @property
    def label(self) -> str:
        return self.via

    async def attempt(self, asked: Asked) -> Outcome:
        """One call within the request's remaining budget (a runtime target always gets
        all of it). The call carries every field of the job (`ChatCall.of`: tools,
        response_format, extra...); an embed job calls the embeddings endpoint instead."""
        if asked.on_model is not None:
            asked.on_model(self.model)
        left_s = asked.deadline - self.clock()
        started = time.perf_counter()
        on_piece = asked.on_piece
        delivered = 0

        async def counted(piece: Piece) -> None:
            nonlocal delivered
            delivered += 1
            assert on_piece is not None
            await on_piece(piece)

        job, done = asked.job, (True if on_piece is not None else None)
        try:
            result = await self._run(job, left_s, counted if on_piece is not None else None)
        except InferbusError as error:
            answer = JobResponse.failure(
                job.job_id, error, model=self.model, runtime=self.runtime.kind, done=done
            )
        else:
            answer = answer_of(
                job,
                result,
                model=self.model,
                runtime=self.runtime.kind,
                node=self.node,
                elapsed_ms=elapsed_ms(started),
                done=done,
            )
        took = elapsed_ms(started)
        code = answer.error.code if answer.error is not None else "ok"
        record = Attempt(via=self.via, node=None, model=self.model, outcome=code, ms=took)
        return Outcome(answer, "answered", delivered, elapsed_ms=took, attempts=(record,))

    async def _run(self, job: JobRequest, left_s: float, on_piece: PieceSink | None) -> Result:
        if job.type == "embed":
            call = EmbedCall(self.model, job.embed_inputs(), job.params.dimensions, job.extra)
            embedded = await embed_within(self.runtime, call, left_s)
            return Result(finish_reason="stop", usage=embedded.usage, embeddings=embedded.vectors)
        chat = call_of(job, self.model)
        if on_piece is None:
            reply = await chat_within(self.runtime, chat, left_s)
        else:
            reply = await stream_pieces(self.runtime, chat, left_s, on_piece)
        return result_of(reply)


def static_kind(provider: str | None) -> RuntimeKind:
    """The wire protocol a static endpoint speaks: Ollama's own, else OpenAI's."""
    return "ollama" if provider == "ollama" else "openai"


class StaticRuntimes:
    """One adapter per static endpoint the selection config names (profiles with a
    `base_url`, the hard default's), built once; keys read from `environ` once."""

    def __init__(
        self, selection: SelectionConfig, http: httpx.AsyncClient, environ: Mapping[str, str]
    ) -> None:
        endpoints: set[StaticEndpoint] = {
            (static_kind(profile.provider), profile.base_url, profile.api_key_env)
            for profile in selection.llm_profiles.values()
            if profile.base_url is not None
        }
        hard = selection.hard_default
        if hard is not None and hard.base_url is not None:
            endpoints.add((static_kind(hard.provider), hard.base_url, None))
        self._runtimes: dict[StaticEndpoint, Runtime] = {
            (kind, url, key_env): make_runtime(
                kind, url, http, api_key=environ.get(key_env) if key_env else None
            )
            for kind, url, key_env in endpoints
        }

    def get(self, provider: str | None, base_url: str, api_key_env: str | None) -> Runtime | None:
        """The adapter for a static pick (None: not an endpoint of the config)."""
        return self._runtimes.get((static_kind(provider), base_url, api_key_env))
