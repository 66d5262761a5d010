"""The wire contract (DESIGN §3): JobRequest, JobResponse, stream Chunk.

Requests are lenient so a hand-typed `nats req` works: everything but the input is
optional, and OpenAI-shaped messages (content parts with `image_url`) are accepted beside
the native shape (`images` on a message). `decode_request` never raises: bad bytes become
a BAD_REQUEST JobResponse that the caller sends back as is.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.bounds import (
    MAX_DIMENSIONS,
    MAX_TOKENS,
    check_embed_inputs,
    check_messages,
    check_stop,
    check_tools,
)
from services.errors import ErrorCode, InferbusError, Reason
from services.wire_features import (
    JsonObject,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)

JobType = Literal["llm", "vision", "code", "embed"]
JOB_TYPES: tuple[JobType, ...] = ("llm", "vision", "code", "embed")
# A node's job slots, its load and the router's breakers come in these kinds.
SlotKind = Literal["llm", "vision", "embed"]
SLOT_KINDS: tuple[SlotKind, ...] = ("llm", "vision", "embed")


def slot_kind(job_type: str) -> SlotKind:
    """The slots a job (or a served model) of `job_type` takes on a node: vision and embed
    have their own; code runs on the llm runtimes, so it shares the llm slots (and breaker)."""
    if job_type == "vision":
        return "vision"
    if job_type == "embed":
        return "embed"
    return "llm"


def new_job_id() -> str:
    return uuid.uuid4().hex


class _Lenient(BaseModel):
    """Unknown fields are ignored so older workers accept newer callers."""

    model_config = ConfigDict(extra="ignore")


class ImageURL(_Lenient):
    url: str


class ContentPart(_Lenient):
    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None


class Message(_Lenient):
    """One chat message; `tool_calls` on an assistant's, `tool_call_id`/`name` on a tool's."""

    role: str = "user"
    content: str | list[ContentPart] | None = None
    images: list[str] = Field(default_factory=list)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text, OpenAI content parts joined."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(part.text or "" for part in self.content if part.type == "text")

    @property
    def all_images(self) -> list[str]:
        """Images from `images` and from `image_url` parts, as base64 or URLs."""
        found = list(self.images)
        if isinstance(self.content, list):
            for part in self.content:
                ref = part.image_url
                if ref is not None:
                    found.append(ref if isinstance(ref, str) else ref.url)
        return found


_PENALTY = Field(ge=-2, le=2)
_TOKENS = Field(gt=0, le=MAX_TOKENS)


class Params(_Lenient):
    """Sampling and answer-shape parameters, OpenAI's names and ranges.

    `max_completion_tokens` is OpenAI's newer name for `max_tokens`: the smaller of the two
    is the cap, kept in `max_tokens` (what every adapter reads). `n` above 1 and `logprobs`
    change what the answer means, so they are honoured or refused, never ignored.
    """

    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, _TOKENS] | None = None
    max_completion_tokens: Annotated[int, _TOKENS] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, _PENALTY] | None = None
    frequency_penalty: Annotated[float, _PENALTY] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    user: str | None = None
    dimensions: Annotated[int, Field(gt=0, le=MAX_DIMENSIONS)] | None = None  # embeddings only

    @field_validator("stop", mode="before")
    @classmethod
    def _bounded_stop(cls, value: Any) -> Any:
        return check_stop(value)

    @model_validator(mode="after")
    def _one_token_cap(self) -> Params:
        if self.max_completion_tokens is not None:
            caps = [c for c in (self.max_tokens, self.max_completion_tokens) if c is not None]
            self.max_tokens = min(caps)
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


# Generous, but finite: larger numbers would overflow deadline arithmetic. A budget a
# process sends (a configured default) is bounded by the same number at its start.
MAX_TIMEOUT_MS = 2**53
_BOUNDED_MS = Field(ge=-MAX_TIMEOUT_MS, le=MAX_TIMEOUT_MS)
# A hand-typed `"job_id": 42` is meant as the string "42".
_ID = Field(min_length=1, max_length=200, coerce_numbers_to_str=True)
_PARAM_NAMES = frozenset(Params.model_fields)


# `extra` may not set what the job sets itself (or the stream framing the worker owns).
_RESERVED_IN_EXTRA = _PARAM_NAMES | {
    "model",
    "messages",
    "prompt",
    "input",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "suffix",
}


class JobRequest(_Lenient):
    job_id: Annotated[str, _ID] = Field(default_factory=new_job_id)
    idempotency_key: Annotated[str, _ID] | None = None
    type: JobType | None = None
    model: Annotated[str, Field(min_length=1)] | None = None
    messages: list[Message] | None = None
    prompt: str | None = None
    images: list[str] = Field(default_factory=list)
    input: str | list[str] | None = None  # what an embed job embeds
    # `prompt` goes to the model as is, without the chat template: OpenAI's legacy
    # /v1/completions, Ollama's /api/generate with `raw`. `suffix` (text after the
    # insertion point, fill-in-the-middle) needs a model with the `insert` capability.
    raw: bool = False
    suffix: str | None = None
    params: Params = Field(default_factory=Params)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # Other OpenAI fields (top_k, min_p, guided_json...), passed verbatim to
    # OpenAI-compatible runtimes; the Ollama adapter maps, drops or refuses each by name.
    extra: JsonObject = Field(default_factory=dict)
    stream: bool = False
    # The last message is the assistant's answer so far: the runtime continues it rather
    # than answering it (a stream resumed on another node after its first one was lost).
    # None (not sent on the wire) unless set.
    continue_final: bool | None = None
    # Models to fall through when `model` cannot be served (the router's cloud chains).
    # LiteLLM callers send `fallbacks`, whose items may be {"model": name}.
    # None (not sent on the wire) unless the caller gave some.
    fallback_models: list[str] | None = Field(
        default=None, validation_alias=pydantic.AliasChoices("fallback_models", "fallbacks")
    )
    timeout_ms: Annotated[int, _BOUNDED_MS] | None = None
    deadline_unix_ms: Annotated[int, _BOUNDED_MS] | None = None
    trace: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _lift_top_level_params(cls, data: Any) -> Any:
        """OpenAI callers put `max_tokens` & co. at the top level; `params` wins if both."""
        if isinstance(data, dict) and not _PARAM_NAMES.isdisjoint(data):
            lifted = {name: data[name] for name in _PARAM_NAMES if name in data}
            given = data.get("params")
            if given is None or isinstance(given, dict):
                data = {**data, "params": {**lifted, **(given or {})}}
        return data

    @field_validator("input", mode="before")
    @classmethod
    def _bounded_input(cls, value: Any) -> Any:
        return check_embed_inputs(value)

    @field_validator("messages", mode="before")
    @classmethod
    def _bounded_messages(cls, value: Any) -> Any:
        return check_messages(value)

    @field_validator("tools", mode="before")
    @classmethod
    def _bounded_tools(cls, value: Any) -> Any:
        return check_tools(value)

    @field_validator("fallback_models", mode="before")
    @classmethod
    def _fallback_names(cls, value: Any) -> Any:
        """LiteLLM's `fallbacks` items may be objects naming a `model`: keep the name."""
        if isinstance(value, list):
            return [item.get("model") if isinstance(item, dict) else item for item in value]
        return value

    @model_validator(mode="after")
    def _has_input(self) -> JobRequest:
        if not self.messages and self.prompt is None and self.input is None:
            raise ValueError("a job needs `messages` (non-empty), `prompt` or `input`")
        if self.extra:
            taken = sorted(_RESERVED_IN_EXTRA.intersection(self.extra))
            if taken:
                raise ValueError(f"extra.{taken[0]} is a field of the job itself; set it there")
        if self.continue_final:
            last = self.messages[-1] if self.messages else None
            if last is None or last.role != "assistant" or last.tool_calls:
                raise ValueError(
                    "continue_final: the last message must be the assistant's text to continue"
                )
        return self

    def embed_inputs(self) -> list[str]:
        """What an embed job embeds: `input` (a string or a list), else the prompt."""
        if isinstance(self.input, list):
            return self.input
        if self.input is not None:
            return [self.input]
        return [self.prompt] if self.prompt is not None else []

    @property
    def key(self) -> str:
        """The idempotency key: explicit, else the job id."""
        return self.idempotency_key or self.job_id

    def chat_messages(self) -> list[Message]:
        """The input as messages: `prompt` (+ `images`) becomes one user message."""
        if self.messages:
            if self.images:
                last = self.messages[-1]
                merged = last.model_copy(update={"images": [*last.images, *self.images]})
                return [*self.messages[:-1], merged]
            return self.messages
        return [Message(role="user", content=self.prompt or "", images=self.images)]

    def has_images(self) -> bool:
        return self.may_have_images() and any(
            message.all_images for message in self.chat_messages()
        )

    def may_have_images(self) -> bool:
        """Cheap: only `images` lists and content parts can hold images (a per-job check)."""
        return bool(self.images) or any(
            message.images or isinstance(message.content, list) for message in self.messages or ()
        )

    def fingerprint(self) -> str:
        """What a repeated idempotency key must repeat to be the same job: type, input,
        params and the fields that change what the answer means (tools, response format...).

        Not the model, which is compared once resolved (omitted and named can be the same
        model), and not `stream`: a whole answer and a stream are the same job delivered
        two ways, so a retry that switches between them replays instead of failing.
        """
        # The input as messages: `prompt` and one user message are the same input.
        shape = [message.model_dump(mode="json") for message in self.chat_messages()]
        params = self.params.model_dump(mode="json")
        meaning = self.model_dump(
            mode="json",
            include={
                "input",
                "raw",
                "suffix",
                "tools",
                "tool_choice",
                "parallel_tool_calls",
                "response_format",
                "extra",
            },
        )
        payload = json.dumps(
            [self.type, shape, params, meaning], sort_keys=True, ensure_ascii=False
        )
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Result(BaseModel):
    """The answer: text and/or `tool_calls` (then `finish_reason: tool_calls`); an embed
    job's `embeddings`, one vector per input in input order; `logprobs` when asked, in
    OpenAI's shape (`{"content": [{token, logprob, bytes, top_logprobs}]}`);
    `stop_sequence`: the caller's stop string that ended the answer, where the runtime
    says which did (vLLM); absent otherwise."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost: float | None = None
    tool_calls: list[ToolCall] | None = None
    logprobs: dict[str, Any] | None = None
    embeddings: list[list[float]] | None = None
    stop_sequence: str | None = None


class ErrorInfo(BaseModel):
    code: ErrorCode
    message: str
    retryable: bool = False
    retry_after_ms: int | None = None
    # Additive: absent from older senders, ignored by older readers.
    reason: Reason | None = None

    @field_validator("reason", mode="before")
    @classmethod
    def _unknown_reason_is_unknown(cls, value: Any) -> Any:
        """A reason a newer sender invented must not make the whole reply unreadable."""
        if value is None or value in Reason.__members__.values():
            return value
        return Reason.UNKNOWN

    @classmethod
    def of(cls, error: InferbusError) -> ErrorInfo:
        return cls(
            code=error.code,
            message=error.message,
            retryable=error.retryable,
            retry_after_ms=error.retry_after_ms,
            reason=error.reason,
        )


class Timings(BaseModel):
    """Where the job's time went on the node. The runtime's own split of `backend_ms`
    (`load_ms` loading the model, `prompt_ms` reading the prompt, `eval_ms` generating)
    is there when the runtime reports it or the worker measured it (a stream's first
    piece); older workers and silent runtimes leave those out."""

    queue_ms: float = 0.0
    backend_ms: float = 0.0
    total_ms: float = 0.0
    load_ms: float | None = None
    prompt_ms: float | None = None
    eval_ms: float | None = None


class JobResponse(BaseModel):
    job_id: str
    status: Literal["ok", "error"]
    node_id: str | None = None
    model: str | None = None
    runtime: str | None = None
    result: Result | None = None
    error: ErrorInfo | None = None
    timings: Timings = Field(default_factory=Timings)
    cached: bool = False
    done: bool | None = None

    @classmethod
    def failure(cls, job_id: str, error: InferbusError, **fields: Any) -> JobResponse:
        return cls(job_id=job_id, status="error", error=ErrorInfo.of(error), **fields)


_REPLAYABLE_ERRORS = frozenset(
    {ErrorCode.BAD_REQUEST, ErrorCode.CONTEXT_EXCEEDED, ErrorCode.PAYLOAD_TOO_LARGE}
)


def is_replayable(response: JobResponse) -> bool:
    """Whether an answer may be kept for its idempotency key and replayed: what the caller
    would get anyway next time (`ok`, or the request's own fault), never BUSY, a spent
    deadline or a runtime failure, so that a retry of those really runs."""
    if response.status == "ok":
        return True
    return response.error is not None and response.error.code in _REPLAYABLE_ERRORS


class Chunk(BaseModel):
    """A piece of a streamed answer: text, or tool-call pieces (`delta` is then "")."""

    job_id: str
    seq: int
    delta: str = ""
    tool_calls: list[ToolCallDelta] | None = None

    def pieces(self) -> list[Piece]:
        """What the chunk carries, in order: tool-call pieces, then text (either may be
        absent; an empty chunk still counts as one piece so a stream's first chunk is seen)."""
        found: list[Piece] = []
        if self.tool_calls:
            found.append(self.tool_calls)
        if self.delta or not found:
            found.append(self.delta)
        return found


# One piece of a streamed answer as the router relays it: text, or tool-call deltas.
Piece = str | list[ToolCallDelta]
# Where a stream's pieces go, as they are produced.
PieceSink = Callable[[Piece], Awaitable[None]]
# Hears the model that serves a stream, once its target is chosen.
ModelSink = Callable[[str], None]


def replay_pieces(result: Result) -> list[Piece]:
    """A kept answer as a stream replays it: its tool calls whole, then its whole text
    (also when empty and there are no tool calls, so the stream has a first piece)."""
    pieces: list[Piece] = []
    if result.tool_calls:
        pieces.append([ToolCallDelta.whole(at, call) for at, call in enumerate(result.tool_calls)])
    if result.text or not pieces:
        pieces.append(result.text)
    return pieces


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=True).encode()


def decode_request(data: bytes, *, default_type: JobType) -> JobRequest | JobResponse:
    """Parse a job; bad bytes or a wrong shape give a BAD_REQUEST response instead.

    The JSON is parsed first and validated after (`request_of`). A process that takes
    jobs from the bus parses big ones off its event loop: `services.big_json.decode_job`.
    """
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as exc:
        return not_json(exc)
    return request_of(parsed, default_type=default_type)


def not_json(exc: Exception) -> JobResponse:
    """The answer to a job that is not JSON (or not JSON within the bounds)."""
    error = InferbusError(ErrorCode.BAD_REQUEST, f"body: not usable JSON ({exc})"[:200])
    return JobResponse.failure(new_job_id(), error)


def request_of(parsed: Any, *, default_type: JobType) -> JobRequest | JobResponse:
    """A job from parsed JSON, or BAD_REQUEST naming the field.

    Validated from plain Python values, not with pydantic's JSON mode: the bounds on list
    lengths (services/bounds.py) then see plain lists, where JSON mode would first turn
    every item of an over-long list into Python objects (half a second for 200,000
    messages, all of it holding the event loop).
    """
    try:
        request = JobRequest.model_validate(parsed)
    except pydantic.ValidationError as exc:
        error = InferbusError(ErrorCode.BAD_REQUEST, _describe(exc))
        return JobResponse.failure(_job_id_of(parsed), error)
    if request.type is None:
        request.type = default_type
    return request


# OpenAI request fields the HTTP edge itself answers for (the SSE usage chunk, base64
# vectors); everything else of an OpenAI body is the job's, or goes to the runtime.
OPENAI_EDGE_FIELDS = frozenset({"stream_options", "encoding_format"})


def accepted_names(model: type[BaseModel]) -> frozenset[str]:
    """Every key a model takes from a body: its field names and their aliases (a field
    taken under another name, e.g. LiteLLM's `fallbacks`, is the job's, not `extra`)."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        if info.alias:
            names.add(info.alias)
        alias = info.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, pydantic.AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
    return frozenset(names)


_JOB_FIELD_NAMES = accepted_names(JobRequest) | _PARAM_NAMES


def openai_job_fields(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI request body as job fields: ours as they are, the rest under `extra`
    (verbatim, for the runtime to honour or refuse by name), so nothing is dropped."""
    extra = {
        key: value
        for key, value in body.items()
        if key not in _JOB_FIELD_NAMES and key not in OPENAI_EDGE_FIELDS
    }
    fields = {key: value for key, value in body.items() if key in _JOB_FIELD_NAMES}
    given = fields.get("extra")
    if extra:
        fields["extra"] = {**extra, **(given if isinstance(given, dict) else {})}
    return fields


def request_from_fields(fields: dict[str, Any]) -> JobRequest | InferbusError:
    """A job from already-parsed JSON (an HTTP body); its type stays as the caller sent it."""
    try:
        return JobRequest.model_validate(fields)
    except pydantic.ValidationError as exc:
        return InferbusError(ErrorCode.BAD_REQUEST, _describe(exc))


class _Cancel(_Lenient):
    job_id: Annotated[str, _ID]


def cancel_target(data: bytes) -> str | None:
    """The job id of a cancel message `{"job_id": ...}`, None when it names none."""
    try:
        return _Cancel.model_validate_json(data).job_id
    except pydantic.ValidationError:
        return None


def decode_response(data: bytes) -> JobResponse:
    """Parse a reply; a reply that is not a JobResponse is reported as INTERNAL."""
    try:
        return JobResponse.model_validate_json(data)
    except pydantic.ValidationError as exc:
        error = InferbusError(ErrorCode.INTERNAL, f"unreadable reply: {_describe(exc)}")
        return JobResponse.failure("", error)


def _job_id_of(parsed: Any) -> str:
    """The job id of a job that failed validation, when it has a usable one."""
    job_id = parsed.get("job_id") if isinstance(parsed, dict) else None
    if isinstance(job_id, bool) or not isinstance(job_id, str | int):
        return new_job_id()
    text = str(job_id)
    return text if 1 <= len(text) <= 200 else new_job_id()


def _describe(exc: pydantic.ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg'].removeprefix('Value error, ')}{more}"
