"""Runtime failures become `InferbusError` here, and only here (CONVENTIONS §2).

    httpx.TransportError, TimeoutError ── classify_transport_error ─┬─ DEADLINE_EXCEEDED
                                                                    └─ BACKEND_UNAVAILABLE
    HTTP status + error body ──────────── classify_http_error ──────┬─ RuntimeLoading (503 loading)
                                                                    ├─ MODEL_NOT_FOUND
    {"error": ...} inside a 200 stream ── classify_stream_error ────┼─ CONTEXT_EXCEEDED
                                                                    ├─ PAYLOAD_TOO_LARGE
                                                                    ├─ BACKEND_UNAVAILABLE
                                                                    ├─ BAD_REQUEST (other 4xx)
                                                                    └─ BACKEND_ERROR

Error bodies seen in the wild (checked against the runtimes' sources):
- Ollama: `{"error": "model \"x\" not found, try pulling it first"}` (404); context
  overflow says "... exceeds the context length" / "longer than the context length".
- OpenAI: `{"error": {"message", "type", "param", "code"}}`, code `context_length_exceeded`
  or `model_not_found`; `retry-after-ms` / `retry-after` headers on 429.
- llama.cpp server: `{"error": {"code": 400, "message": "request (9412 tokens) exceeds the
  available context size (8192 tokens)...", "type": "exceed_context_size_error"}}`;
  503 `{"error": {"message": "Loading model", "type": "unavailable_error"}}`.
- vLLM: `{"error": {...}}` or, in older releases, the same fields at top level with
  `"object": "error"`; "This model's maximum context length is N tokens" or "...is longer
  than the maximum model length".

Beware of the transport: httpx-aiohttp 0.2 maps *every* `aiohttp.ClientConnectionError`
(connection refused, server disconnected) to `httpx.ConnectTimeout`. A connect "timeout"
therefore means "unreachable", never "the job's budget is spent".

Every error made here also carries a `reason` (`services.runtimes.reasons`): transport
failures are `transient`, unreadable 2xx answers `unknown`, HTTP errors by status and body.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from services.errors import ErrorCode, InferbusError, Reason
from services.runtimes.reasons import reason_of, says_context_exceeded, says_model_missing

MAX_MESSAGE_CHARS = 300
LOADING_MESSAGE = "Loading model"  # llama.cpp server's 503 while it loads the GGUF


class RuntimeLoading(InferbusError):
    """The runtime is up but still loading its model: not routable, and not a fault."""


def refused_our_key(error: InferbusError) -> bool:
    """The runtime refused our key (401/403, or a body saying so): this node's fault."""
    return error.reason == Reason.AUTH


# 4xx answers that are not about the request's content: the runtime's own configuration
# (401/403: a wrong or missing key on the node), a timeout (408) or a limit (429).
_NOT_THE_REQUEST = frozenset({401, 403, 407, 408, 429})
_SECRET_PATTERNS = (
    re.compile(r"(?i)bearer\s+\S+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@"),  # user:password@ in URLs
)


@dataclass(frozen=True)
class ErrorDetail:
    """What a runtime said about its failure, whatever shape it used."""

    message: str
    type: str = ""
    code: str = ""


def parse_error_body(body: bytes) -> ErrorDetail:
    """Read an error body: JSON in any of the known shapes, else its text."""
    try:
        payload = json.loads(body)
    except ValueError:
        return ErrorDetail(body.decode("utf-8", "replace").strip())
    return error_detail_of(payload)


def error_detail_of(payload: Any) -> ErrorDetail:
    """`{"error": "..."}`, `{"error": {...}}`, top-level OpenAI fields, `{"detail": ...}`."""
    if not isinstance(payload, dict):
        return ErrorDetail(json.dumps(payload))
    error = payload.get("error", payload)
    if isinstance(error, str):
        return ErrorDetail(error)
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or payload.get("detail")
        if message is None:
            message = json.dumps(error)
        return ErrorDetail(str(message), str(error.get("type") or ""), str(error.get("code") or ""))
    return ErrorDetail(json.dumps(payload))


def classify_http_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now_unix_s: float | None = None,
    secrets: Iterable[str] = (),
) -> InferbusError:
    """Map a runtime's HTTP error answer to our code.

    Args:
        status: the HTTP status (>= 400).
        body: the raw response body.
        headers: response headers (case-insensitive mapping); Retry-After is read from them.
        now_unix_s: the current time, only needed to read an HTTP-date Retry-After.
        secrets: strings (API keys) to blank out of the message.
    """
    return _classify(status, parse_error_body(body), headers, now_unix_s, secrets)


def classify_stream_error(payload: Any, *, secrets: Iterable[str] = ()) -> InferbusError:
    """An error object that arrived inside a stream whose status was already 200."""
    return _classify(None, error_detail_of(payload), {}, None, secrets)


def _classify(
    status: int | None,
    detail: ErrorDetail,
    headers: Mapping[str, str],
    now_unix_s: float | None,
    secrets: Iterable[str],
) -> InferbusError:
    error = _code_of(status, detail, headers, now_unix_s, secrets)
    error.reason = reason_of(status, detail.message, detail.type, detail.code)
    if error.reason == Reason.AUTH and error.code == ErrorCode.BAD_REQUEST:
        # "invalid api key" in a 400: the node's key is wrong, not the caller's request.
        return InferbusError(ErrorCode.BACKEND_ERROR, error.message, reason=Reason.AUTH)
    return error


def _code_of(
    status: int | None,
    detail: ErrorDetail,
    headers: Mapping[str, str],
    now_unix_s: float | None,
    secrets: Iterable[str],
) -> InferbusError:
    text = redact(detail.message, secrets)[:MAX_MESSAGE_CHARS]
    message = f"HTTP {status}: {text}" if status is not None else f"runtime error: {text}"
    if status == 429:
        # Checked first: rate-limit texts talk about tokens too ("tokens per minute").
        retry = retry_after_ms(headers, now_unix_s=now_unix_s)
        return InferbusError(ErrorCode.BACKEND_UNAVAILABLE, message, retry_after_ms=retry)
    if status == 503 and detail.message == LOADING_MESSAGE:
        return RuntimeLoading(ErrorCode.BACKEND_UNAVAILABLE, message)
    if says_context_exceeded(detail.message, detail.type, detail.code):
        return InferbusError(ErrorCode.CONTEXT_EXCEEDED, message)
    if status == 404 or says_model_missing(detail.message, detail.code):
        return InferbusError(ErrorCode.MODEL_NOT_FOUND, message)
    if status in (502, 503, 504):
        retry = retry_after_ms(headers, now_unix_s=now_unix_s)
        return InferbusError(ErrorCode.BACKEND_UNAVAILABLE, message, retry_after_ms=retry)
    if status == 413:
        return InferbusError(ErrorCode.PAYLOAD_TOO_LARGE, message)
    if status is not None and 400 <= status < 500 and status not in _NOT_THE_REQUEST:
        # The runtime rejected this request's content: another runtime would too. It is
        # the request's fault, neutral for every node's health.
        return InferbusError(ErrorCode.BAD_REQUEST, message)
    return InferbusError(ErrorCode.BACKEND_ERROR, message)


def retry_after_ms(headers: Mapping[str, str], *, now_unix_s: float | None = None) -> int | None:
    """`retry-after-ms` (OpenAI), else `Retry-After` in seconds or as an HTTP date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0, int(float(raw_ms)))
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0, int(float(raw) * 1000))
    except ValueError:
        pass
    if now_unix_s is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0, int((when.timestamp() - now_unix_s) * 1000))


def classify_transport_error(
    exc: BaseException, *, mid_stream: bool = False, secrets: Iterable[str] = ()
) -> InferbusError:
    """Map a failure to get (or keep reading) an answer: deadline, or unreachable runtime.

    `TimeoutError` is our own deadline (`asyncio.timeout`) running out.
    """
    if _is_deadline(exc):
        return InferbusError(
            ErrorCode.DEADLINE_EXCEEDED,
            "the runtime did not answer within the deadline",
            reason=Reason.TRANSIENT,
        )
    what = "connection to the runtime lost mid-stream" if mid_stream else "runtime unreachable"
    # Name the transport's own exception: httpx-aiohttp's class names are misleading.
    cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) and exc.__cause__ else exc
    detail = redact(f"{type(cause).__name__}: {cause}", secrets)[:MAX_MESSAGE_CHARS]
    return InferbusError(
        ErrorCode.BACKEND_UNAVAILABLE, f"{what}: {detail}", reason=Reason.TRANSIENT
    )


def _is_deadline(exc: BaseException) -> bool:
    for link in _cause_chain(exc):
        if isinstance(link, aiohttp.ConnectionTimeoutError):
            return False  # could not even connect: the runtime is unreachable
        if isinstance(link, aiohttp.ServerTimeoutError):
            return True  # connected, but the answer did not come in time
    if isinstance(exc, httpx.ConnectTimeout):
        return False  # see the module docstring: mostly "refused" or "disconnected"
    return isinstance(exc, httpx.TimeoutException | TimeoutError)


def _cause_chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Blank out API keys, bearer tokens and URL passwords from a message."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("***", text)
    return text


def invalid_response(what: str) -> InferbusError:
    """The runtime answered 2xx with something we cannot read."""
    return InferbusError(
        ErrorCode.BACKEND_ERROR, f"unreadable runtime response: {what}", reason=Reason.UNKNOWN
    )
