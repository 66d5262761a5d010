"""Resuming a broken stream on another node: what the client already has, whether the
stream may go on elsewhere, and the job that continues it.

Pure. The dispatcher keeps a `StreamSoFar` per streamed call (fed by the same sink that
relays pieces to the client); when an attempt that already delivered pieces fails by the
node's own fault, `may_resume` decides and `continuing_job` makes the job for the next
node: the same request plus the text so far as a final assistant message to continue
(`continue_final`), so the client sees one stream with no repeated or missing piece.

A tool call is never resumed half-way: once any tool-call piece went out, the client
holds a call it cannot be told to forget, so the stream ends with the error instead.
The model's reasoning likewise: a stream that sent reasoning resumes only once its
answer's text has begun. A node lost while the model is still thinking ends the stream
with the error (another node would think anew, and the client would see two lines of
thought). After a resume the continuing node's own reasoning, if any, is not relayed:
the client has the reasoning already, and the continuation only continues the text.
A raw prompt (legacy completions) continues by appending the text to the prompt. A job
with its own prompt template (`extra.template`) never resumes: a template renders one
prompt, not an answer to continue, so no node could take the continuation.

What the client is told it cost: every attempt's tokens, summed (`whole_answer`). A node
lost mid-answer never reports its usage, so a broken attempt counts the pieces it
delivered as its completion, and as its prompt the answering attempt's prompt less the
text that attempt was sent beyond it (one token a piece, as runtimes stream them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from services.needs import wants_template
from services.wire import JobRequest, Message, Piece, PieceSink, Result, Thinking, Usage

__all__ = [
    "RESUME_HEADER",
    "StreamSoFar",
    "attempt_usages",
    "caller_allows_resume",
    "continuing_job",
    "may_resume",
    "whole_answer",
]

RESUME_HEADER = "x-inferbus-resume"  # "off": the caller wants the error, not a resumed stream
_REFUSED = frozenset({"off", "false", "0", "no"})


def caller_allows_resume(header: str | None, stream_options: Any) -> bool:
    """Whether this caller lets a broken stream resume: not when it sent
    `x-inferbus-resume: off` or `"stream_options": {"resume": false}` (it wants the error)."""
    if header is not None and header.strip().lower() in _REFUSED:
        return False
    return not (isinstance(stream_options, dict) and stream_options.get("resume") is False)


@dataclass
class StreamSoFar:
    """What one streamed call has handed to its client, across every attempt.

    Pieces are kept as a list and joined only when a resume needs the text: noting a
    piece costs the same however long the answer already is.
    """

    pieces: int = 0
    tool_calls_sent: bool = False
    resumes: int = 0
    text_before_resume: str = ""  # what the client had when the last resume began
    pieces_before_resume: int = 0
    breaks: list[int] = field(default_factory=list)  # pieces the client had at each resume
    _texts: list[str] = field(default_factory=list)
    _thoughts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self._texts)

    @property
    def thinking(self) -> str:
        """The reasoning the client has."""
        return "".join(self._thoughts)

    def took(self, piece: Piece) -> None:
        self.pieces += 1
        if isinstance(piece, str):
            self._texts.append(piece)
        elif isinstance(piece, Thinking):
            self._thoughts.append(piece.text)
        else:
            self.tool_calls_sent = True

    def relay(self, sink: PieceSink) -> PieceSink:
        """`sink`, noting each piece on its way to the client; a continuing node's
        reasoning stays behind (module doc)."""

        async def noted(piece: Piece) -> None:
            if self.resumes and isinstance(piece, Thinking):
                return
            self.took(piece)
            await sink(piece)

        return noted

    def resumed(self) -> None:
        self.resumes += 1
        self.text_before_resume = self.text
        self.pieces_before_resume = self.pieces
        self.breaks.append(self.pieces)


def may_resume(so_far: StreamSoFar, *, node_fault: bool, allowed: int, job: JobRequest) -> bool:
    """Whether a stream broken after its first piece goes on on another node.

    Only a failure of the node's own making (the caller's budget, a cancellation, a
    malformed request never are), at most `allowed` times per call (0: resume is off,
    for the router or this caller), never after a tool-call piece went out, and only
    for jobs whose answer is text (not one rendered by its own template), while the
    caller's `max_tokens` leaves a token to go; after reasoning, only once the answer's
    text has begun.
    """
    if not node_fault or so_far.resumes >= allowed:
        return False
    if so_far.pieces == 0 or so_far.tool_calls_sent:
        return False
    if so_far.thinking and not so_far.text:
        return False  # still thinking: the stream ends with the error (module doc)
    if wants_template(job):
        return False  # a template renders one prompt, never a continued answer (module doc)
    if job.params.max_tokens is not None and so_far.pieces >= job.params.max_tokens:
        return False  # the client has every token the cap allows: going on would exceed it
    return job.type in (None, "llm", "code", "vision") and job.input is None


def continuing_job(
    job: JobRequest, text_so_far: str, resumes: int, pieces_so_far: int
) -> JobRequest:
    """The job that makes another node continue `text_so_far` rather than start over.

    Args:
        job: the call's own job, as first sent (not an earlier resumed one).
        text_so_far: every piece of text the client has, over all attempts.
        resumes: how many times the stream has resumed, this one included: the
            continuation is a job of its own for the node's idempotency (another key),
            while the router keeps the whole answer under the caller's key.
        pieces_so_far: the pieces the client has: the caller's token cap
            (`max_tokens`) is what is left of it, so the whole answer keeps to the cap.
    """
    key = _continuation_key(job.key, resumes)
    params = job.params
    if params.max_tokens is not None:
        left = max(1, params.max_tokens - pieces_so_far)
        params = params.model_copy(update={"max_tokens": left, "max_completion_tokens": None})
    if job.raw or job.suffix is not None:
        update = {
            "prompt": (job.prompt or "") + text_so_far,
            "idempotency_key": key,
            "params": params,
        }
        return job.model_copy(update=update)
    messages = job.chat_messages()
    last = messages[-1]
    if job.continue_final and isinstance(last.content, str):  # the caller's own prefill
        messages = messages[:-1]
        text_so_far = last.content + text_so_far
    prefill = Message(role="assistant", content=text_so_far)
    return job.model_copy(
        update={
            "messages": [*messages, prefill],
            "prompt": None,
            "images": [],
            "continue_final": True,
            "idempotency_key": key,
            "params": params,
        }
    )


def _continuation_key(key: str, resumes: int) -> str:
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"resume{resumes}-{digest}"


def whole_answer(result: Result, so_far: StreamSoFar) -> tuple[Result, list[Usage]]:
    """The continuing node's answer made the whole answer: the text the client had before
    the last resume, then the continuation; and what each attempt cost, in order (the
    broken ones, then the answering one), summed into the answer's usage (module doc)."""
    by_attempt = attempt_usages(result.usage, so_far.breaks)
    usage = Usage(
        prompt_tokens=sum(used.prompt_tokens for used in by_attempt),
        completion_tokens=sum(used.completion_tokens for used in by_attempt),
    )
    whole = result.model_copy(
        update={
            "text": so_far.text_before_resume + result.text,
            "usage": usage,
            "thinking": so_far.thinking or None,
        }
    )
    return whole, by_attempt


def attempt_usages(answering: Usage, breaks: list[int]) -> list[Usage]:
    """Each attempt's tokens: a broken attempt's completion is the pieces it delivered;
    its prompt, the answering attempt's less the pieces that one was sent beyond it (the
    answering attempt was sent everything the client had at the last break)."""
    usages: list[Usage] = []
    before = 0
    last = breaks[-1] if breaks else 0
    for at in breaks:
        prompt = max(0, answering.prompt_tokens - (last - before))
        usages.append(Usage(prompt_tokens=prompt, completion_tokens=at - before))
        before = at
    return [*usages, answering]
