"""Error codes of the wire contract and the one exception that carries them.

Every failure that crosses a process boundary is an `ErrorCode` (DESIGN §3). Edges
(runtime adapters, the NATS edge) translate foreign exceptions into `InferbusError`
once; nothing above an edge catches `httpx.*` or `nats.errors.*`.

    Exception
    └── InferbusError(code, message, retryable, retry_after_ms, reason)

`code` says what happened in the wire contract's terms; `reason` (optional, filled once at
the runtime edge from the HTTP status and body) says *why* a runtime refused, finely enough
for the cloud failover chain to choose between "next key", "next model" and "return".
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    IDEMPOTENCY_MISMATCH = "IDEMPOTENCY_MISMATCH"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    CONTEXT_EXCEEDED = "CONTEXT_EXCEEDED"
    BUSY = "BUSY"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    BACKEND_ERROR = "BACKEND_ERROR"
    NO_ROUTE = "NO_ROUTE"
    INTERNAL = "INTERNAL"
    # Not in DESIGN §3's table: the caller cancelled the job (a client that went away).
    CANCELLED = "CANCELLED"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.IDEMPOTENCY_MISMATCH: 422,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.CONTEXT_EXCEEDED: 400,
    ErrorCode.BUSY: 429,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.BACKEND_UNAVAILABLE: 503,
    ErrorCode.BACKEND_ERROR: 502,
    ErrorCode.NO_ROUTE: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.CANCELLED: 499,  # nginx's "client closed request"
}

# A caller may try the same job again (elsewhere, or later) after these.
RETRYABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.BUSY,
        ErrorCode.BACKEND_UNAVAILABLE,
        ErrorCode.BACKEND_ERROR,
        ErrorCode.MODEL_NOT_FOUND,
        ErrorCode.INTERNAL,
        ErrorCode.NO_ROUTE,
    }
)


class Reason(StrEnum):
    """Why a runtime or provider refused a call; beside the code, never instead."""

    RATE_LIMITED = "rate_limited"  # 429: this key is over its rate; Retry-After says how long
    AUTH = "auth"  # 401/403, "invalid api key": this key is revoked or wrong
    QUOTA = "quota"  # 402, "insufficient balance/quota/credits": this account is out of money
    MODEL_MISSING = "model_missing"  # 404, "model not found"
    CONTEXT_EXCEEDED = "context_exceeded"  # the prompt is longer than the model's window
    OUTPUT_LIMIT = "output_limit"  # max_tokens above the model's or tier's ceiling
    BAD_REQUEST = "bad_request"  # the request itself is malformed: another target says the same
    TRANSIENT = "transient"  # timeouts, connection resets, 5xx: may work if tried again
    UNKNOWN = "unknown"  # none of the above could be told from the answer


class InferbusError(Exception):
    """A failure with a stable code; `retryable` defaults from the code."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after_ms: int | None = None,
        reason: Reason | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = code in RETRYABLE if retryable is None else retryable
        self.retry_after_ms = retry_after_ms
        self.reason = reason
