"""The wire contract (DESIGN §3): JobRequest, JobResponse, stream Chunk.

Requests are lenient so a hand-typed `nats req` works: everything but the input is
optional, and OpenAI-shaped messages (content parts with `image_url`) are accepted beside
the native shape (`images` on a message). `decode_request` never raises: bad bytes become
a BAD_REQUEST JobResponse that the caller sends back as is.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.errors import ErrorCode, InferbusError, Reason

JobType = Literal["llm", "vision", "code"]
JOB_TYPES: tuple[JobType, ...] = ("llm", "vision", "code")


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
    role: str = "user"
    content: str | list[ContentPart] | None = None
    images: list[str] = Field(default_factory=list)

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


class Params(_Lenient):
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


# Generous, but finite: larger numbers would overflow deadline arithmetic.
_BOUNDED_MS = Field(ge=-(2**53), le=2**53)
# A hand-typed `"job_id": 42` is meant as the string "42".
_ID = Field(min_length=1, max_length=200, coerce_numbers_to_str=True)
_PARAM_NAMES = frozenset(Params.model_fields)


class JobRequest(_Lenient):
    job_id: Annotated[str, _ID] = Field(default_factory=new_job_id)
    idempotency_key: Annotated[str, _ID] | None = None
    type: JobType | None = None
    model: Annotated[str, Field(min_length=1)] | None = None
    messages: list[Message] | None = None
    prompt: str | None = None
    images: list[str] = Field(default_factory=list)
    params: Params = Field(default_factory=Params)
    stream: bool = False
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

    @model_validator(mode="after")
    def _has_input(self) -> JobRequest:
        if not self.messages and self.prompt is None:
            raise ValueError("a job needs `messages` (non-empty) or `prompt`")
        return self

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
        return any(message.all_images for message in self.chat_messages())

    def fingerprint(self) -> str:
        """What must match for a repeated idempotency key to be the same job."""
        payload = self.model_dump_json(
            include={"type", "model", "messages", "prompt", "images", "params", "stream"}
        )
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Result(BaseModel):
    text: str
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost: float | None = None


class ErrorInfo(BaseModel):
    code: ErrorCode
    message: str
    retryable: bool = False
    retry_after_ms: int | None = None
    # Additive (issue 13): absent from older senders, ignored by older readers.
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
    queue_ms: float = 0.0
    backend_ms: float = 0.0
    total_ms: float = 0.0


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


class Chunk(BaseModel):
    job_id: str
    seq: int
    delta: str


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=True).encode()


def decode_request(data: bytes, *, default_type: JobType) -> JobRequest | JobResponse:
    """Parse a job; bad bytes or a wrong shape give a BAD_REQUEST response instead."""
    try:
        request = JobRequest.model_validate_json(data)
    except pydantic.ValidationError as exc:
        return JobResponse.failure(
            _job_id_of(data), InferbusError(ErrorCode.BAD_REQUEST, _describe(exc))
        )
    if request.type is None:
        request.type = default_type
    return request


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


class _JobIdOnly(_Lenient):
    job_id: Annotated[str, _ID]


def _job_id_of(data: bytes) -> str:
    """The job id of a request that failed validation, when one can be read."""
    try:
        return _JobIdOnly.model_validate_json(data).job_id
    except pydantic.ValidationError:
        return new_job_id()


def _describe(exc: pydantic.ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"
