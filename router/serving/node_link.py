"""The router's one NATS edge: a job to one node, whole or streamed, within a wait, as an
`Outcome`. nats-py's exceptions end here.

Replies come back on `_INBOX.<node>.<router random>.<request random>` (one wildcard
subscription for all of them, so a request costs no SUB/UNSUB): the second token is the
node the job went to, so accounts may restrict a worker to replying on `_INBOX.<own
node>.>`; the last token has 128 random bits, so nobody can guess a live inbox. A message
is taken only when it arrives on the inbox of a pending job, from that job's node, and
carries that job's id; anything else is dropped, counted, and logged once per job (a
message behind the job's answer too, whether it came before the answer was read or after).

Whenever the router stops waiting before the node's final answer (its timer, the node
found lost, the caller gone), the node is sent `node.<id>.cancel` for the job, so its
runtime stops and its slot frees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from router.attempts.decision import Ending, Outcome
from router.attempts.route import elapsed_ms
from router.serving.replies import (
    NO_RESPONDERS,
    Answered,
    Foreign,
    NoWorker,
    Waits,
    expired,
    read_reply,
    wait_limit,
)
from services.errors import ErrorCode, InferbusError
from services.subjects import Subjects
from services.tracing import TRACEPARENT
from services.wire import Chunk, JobRequest, JobResponse, JobType, PieceSink, encode

__all__ = ["Lost", "NodeLink", "Probed", "Waits"]

log = logging.getLogger("inferbus.router.link")

# The worker is told a little less than the router waits, so that when the budget runs
# out its own DEADLINE_EXCEEDED arrives before the router's timer fires.
DEADLINE_MARGIN_S = 0.05


@dataclass(frozen=True)
class Lost:
    """Put in a pending job's queue when the liveness probe gives up on its node."""

    why: str


Probed = Literal["alive", "gone", "silent", "bus_down"]


class _Inbox:
    """The messages of one pending request, in order: `asyncio.Queue` without what this
    does not need (bounds, task accounting), made once per request. A `get` that is
    cancelled (its wait ran out) leaves the messages where they are."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Msg | Lost] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Msg | Lost) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Msg | Lost:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def discard(self) -> int:
        """Forget what was never read (messages that came behind the answer): how many
        messages that was."""
        left = sum(1 for item in self._items if not isinstance(item, Lost))
        self._items.clear()
        return left


@dataclass
class _Pending:
    node: str
    job_id: str | None  # None: a liveness probe, answered by the node's record
    queue: _Inbox = field(default_factory=_Inbox)
    dropped: int = 0


class NodeLink:
    def __init__(self, nc: NatsClient, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects
        self._random = secrets.token_hex(8)
        self._pending: dict[str, _Pending] = {}
        self._by_node: dict[str, set[str]] = {}
        self._subscription: Subscription | None = None
        self.dropped = 0  # messages refused: wrong inbox, wrong node, wrong job id

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(
            f"_INBOX.*.{self._random}.*", cb=self._on_reply
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None

    def inbox_for(self, node: str) -> str:
        return f"_INBOX.{node}.{self._random}.{secrets.token_hex(16)}"

    def node_lost(self, node: str, why: str) -> None:
        """Wake every job waiting on `node`: it is gone or hung."""
        for token in self._by_node.get(node, ()):
            pending = self._pending.get(token)
            if pending is not None:
                pending.queue.put_nowait(Lost(why))

    async def probe(self, node: str, timeout_s: float) -> Probed:
        """Ask `node.<id>.caps` on a node-scoped inbox: is the node there and answering?"""
        if not self._nc.is_connected or self._subscription is None:
            return "bus_down"
        inbox = self.inbox_for(node)
        token = inbox.rsplit(".", 1)[1]
        pending = _Pending(node, None)
        self._pending[token] = pending
        try:
            await self._nc.publish(self._subjects.caps(node), b"", reply=inbox)
            async with asyncio.timeout(timeout_s):
                msg = await pending.queue.get()
        except TimeoutError:
            return "silent" if self._nc.is_connected else "bus_down"
        except (nats.errors.Error, OSError):
            return "bus_down"
        finally:
            self._pending.pop(token, None)
        if isinstance(msg, Msg) and not msg.data and msg.headers:
            return "gone" if msg.headers.get("Status") == NO_RESPONDERS else "alive"
        return "alive"

    async def ask(self, node: str, subject: str, data: bytes, timeout_s: float) -> bytes:
        """One request to `node` on a node-scoped inbox (as jobs go); its reply's bytes.

        Raises InferbusError: BACKEND_UNAVAILABLE for no responders, silence within
        `timeout_s` or a bus that is down.
        """
        if not self._nc.is_connected or self._subscription is None:
            raise InferbusError(ErrorCode.BACKEND_UNAVAILABLE, "the router is not connected")
        inbox = self.inbox_for(node)
        token = inbox.rsplit(".", 1)[1]
        self._pending[token] = pending = _Pending(node, None)
        try:
            await self._nc.publish(subject, data, reply=inbox)
            async with asyncio.timeout(timeout_s):
                msg = await pending.queue.get()
        except TimeoutError:
            raise InferbusError(
                ErrorCode.BACKEND_UNAVAILABLE, f"no answer from {node} within {timeout_s} s"
            ) from None
        except (nats.errors.Error, OSError) as exc:
            raise InferbusError(
                ErrorCode.BACKEND_UNAVAILABLE, f"bus error: {type(exc).__name__}"
            ) from None
        finally:
            self._pending.pop(token, None)
        if isinstance(msg, Lost) or (not msg.data and msg.headers):
            raise InferbusError(ErrorCode.BACKEND_UNAVAILABLE, f"no worker on node {node}")
        return msg.data

    async def _on_reply(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        pending = self._pending.get(parts[-1]) if len(parts) == 4 else None
        if pending is None or parts[1] != pending.node:
            self.dropped += 1
            return
        pending.queue.put_nowait(msg)

    async def attempt(
        self,
        node: str,
        job_type: JobType,
        job: JobRequest,
        model: str,
        waits: Waits,
        on_piece: PieceSink | None,
        *,
        trace: Mapping[str, str] | None = None,
    ) -> Outcome:
        """Send `job` for `model` to `node` and wait for its answer (streamed to `on_piece`
        if given). The job on the wire is one copy, with the model, the budget left,
        whether it streams and the trace context (`trace`: W3C `traceparent`,
        `tracestate`), which also goes in the message's NATS headers."""
        started = time.perf_counter()
        if not self._nc.is_connected or self._subscription is None:
            return _ended(job, "bus_down", started, "the router is not connected to NATS")
        inbox = self.inbox_for(node)
        token = inbox.rsplit(".", 1)[1]
        pending = _Pending(node, job.job_id)
        self._pending[token] = pending
        self._by_node.setdefault(node, set()).add(token)
        sent_ms = max(1, int((waits.total_s - DEADLINE_MARGIN_S) * 1000))
        update: dict[str, object] = {
            "model": model,
            "timeout_ms": sent_ms,
            "stream": on_piece is not None,
        }
        if trace:
            update["trace"] = trace.get(TRACEPARENT)
        request = job.model_copy(update=update)
        finished = False
        try:
            try:
                await self._nc.publish(
                    self._subjects.job(node, job_type),
                    encode(request),
                    reply=inbox,
                    headers=dict(trace) if trace else None,
                )
            except nats.errors.MaxPayloadError:
                finished = True
                error = InferbusError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"the job is over the bus limit of {self._nc.max_payload} bytes",
                )
                return Outcome(_failure(job, error, on_piece), elapsed_ms=elapsed_ms(started))
            except (nats.errors.Error, OSError) as exc:
                finished = True
                return _ended(job, "bus_down", started, f"bus error: {type(exc).__name__}")
            outcome = await self._wait(pending, job, waits, on_piece, started)
            finished = outcome.ending in ("answered", "no_responders")
            return outcome
        finally:
            self._pending.pop(token, None)
            late = pending.queue.discard()
            if late:
                self._drop_late(pending, late)
            tokens = self._by_node.get(node)
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del self._by_node[node]
            if not finished:
                await self._cancel(node, job.job_id)

    async def _wait(
        self,
        pending: _Pending,
        job: JobRequest,
        waits: Waits,
        on_piece: PieceSink | None,
        started: float,
    ) -> Outcome:
        """Take the inbox's messages until the answer (`read_reply` says what each means),
        relaying a stream's chunks in order; or until the wait, or the node, is lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + waits.total_s
        streaming = on_piece is not None
        delivered, next_seq, early = 0, 1, dict[int, Chunk]()
        while True:
            left = deadline - loop.time()
            limit = wait_limit(waits, left, streaming=streaming, delivered=delivered)
            try:
                if limit <= 0:
                    raise TimeoutError
                async with asyncio.timeout(limit):
                    item = await pending.queue.get()
            except TimeoutError:
                error, bound = expired(waits, limit, left, pending.node)
                failure = _failure(job, error, on_piece)
                took = elapsed_ms(started)
                return Outcome(failure, "timed_out", delivered, budget_bound=bound, elapsed_ms=took)
            if isinstance(item, Lost):
                error = InferbusError(ErrorCode.BACKEND_UNAVAILABLE, item.why)
                failure = _failure(job, error, on_piece)
                return Outcome(failure, "lost", delivered, elapsed_ms=elapsed_ms(started))
            status = item.headers.get("Status") if item.headers else None
            reply = read_reply(
                item.data, status, job_id=job.job_id, node=pending.node, streaming=streaming
            )
            if isinstance(reply, NoWorker):
                failure = _failure(job, reply.error, on_piece)
                took = elapsed_ms(started)
                return Outcome(failure, "no_responders", delivered, elapsed_ms=took)
            if isinstance(reply, Answered):
                bound, took = waits.budget_bound, elapsed_ms(started)
                return Outcome(
                    reply.response, "answered", delivered, budget_bound=bound, elapsed_ms=took
                )
            if isinstance(reply, Foreign) or on_piece is None:
                self._drop(pending, reply.job_id if isinstance(reply, Foreign) else job.job_id)
                continue
            early[reply.chunk.seq] = reply.chunk
            while next_seq in early:
                delivered += 1
                for piece in early.pop(next_seq).pieces():
                    await on_piece(piece)
                next_seq += 1

    def _drop(self, pending: _Pending, job_id: str) -> None:
        self.dropped += 1
        pending.dropped += 1
        if pending.dropped == 1:
            log.warning(
                "dropped a reply for job %r from %s's inbox: it carries job id %r",
                pending.job_id,
                pending.node,
                job_id,
            )

    def _drop_late(self, pending: _Pending, count: int) -> None:
        """Messages that came on a job's inbox behind its answer and were never read."""
        self.dropped += count
        pending.dropped += count
        if pending.dropped == count:
            log.warning(
                "dropped %d message(s) that came on job %r's inbox from %s behind its answer",
                count,
                pending.job_id,
                pending.node,
            )

    async def _cancel(self, node: str, job_id: str) -> None:
        with contextlib.suppress(Exception):
            await self._nc.publish(
                self._subjects.cancel(node), json.dumps({"job_id": job_id}).encode()
            )


def _failure(job: JobRequest, error: InferbusError, on_piece: PieceSink | None) -> JobResponse:
    return JobResponse.failure(job.job_id, error, done=True if on_piece is not None else None)


def _ended(job: JobRequest, ending: Ending, started: float, message: str) -> Outcome:
    error = InferbusError(ErrorCode.BACKEND_UNAVAILABLE, message)
    return Outcome(JobResponse.failure(job.job_id, error), ending, elapsed_ms=elapsed_ms(started))
