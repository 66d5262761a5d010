"""Resuming a broken stream on another node: what the client already has, whether the
stream may go on elsewhere, and the job that continues it.

Pure. The dispatcher keeps a `StreamSoFar` per streamed call (fed by the same sink that
relays pieces to the client); when an attempt that already delivered pieces fails by the
node's own fault, `may_resume` decides and `continuing_job` makes the job for the next
node: the same request plus the text so far as a final assistant message to continue
(`continue_final`), so the client sees one stream with no repeated or missing piece.

A tool call is never resumed half-way: once any tool-call piece went out, the client
holds a call it cannot be told to forget, so the stream ends with the error instead.
A raw prompt (legacy completions) continues by appending the text to the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from services.wire import JobRequest, Message, Piece

__all__ = ["ResumeSettings", "StreamSoFar", "continuing_job", "may_resume"]

OPT_OUT_HEADER = "x-inferbus-resume"


class ResumeSettings(BaseModel):
    """`offload.resume` / `offload.resume_attempts` in the router's config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    attempts: int = Field(default=2, ge=0, le=10)


@dataclass
class StreamSoFar:
    """What one streamed call has handed to its client, across every attempt."""

    text: str = ""
    pieces: int = 0
    tool_calls_sent: bool = False
    resumes: int = 0

    def took(self, piece: Piece) -> None:
        self.pieces += 1
        if isinstance(piece, str):
            self.text += piece
        else:
            self.tool_calls_sent = True


def may_resume(
    so_far: StreamSoFar,
    *,
    node_fault: bool,
    settings: ResumeSettings,
    opted_out: bool,
    job: JobRequest,
) -> bool:
    """Whether a stream broken after its first piece goes on on another node.

    Only a failure of the node's own making (the caller's budget, a cancellation, a
    malformed request never are), at most `settings.attempts` times per call, never
    after a tool-call piece went out, and only for chat jobs whose answer is text.
    """
    if not settings.enabled or opted_out or not node_fault:
        return False
    if so_far.pieces == 0 or so_far.tool_calls_sent or so_far.resumes >= settings.attempts:
        return False
    return job.type in (None, "llm", "code", "vision") and job.input is None


def continuing_job(job: JobRequest, text_so_far: str) -> JobRequest:
    """The job that makes another node continue `text_so_far` rather than start over.

    Args:
        job: the call's own job, as first sent (not an earlier resumed one).
        text_so_far: every piece of text the client has, over all attempts.
    """
    if job.raw or job.suffix is not None:
        return job.model_copy(update={"prompt": (job.prompt or "") + text_so_far})
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
        }
    )
