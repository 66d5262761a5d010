"""Why a runtime or cloud provider refused a call: its HTTP status and error body → `Reason`.

The code (`services.runtimes.errors`) says what happened in the wire contract's terms; the
reason tells the cloud failover chain what to do about it: cool this key and try the next
(`rate_limited`, `auth`), give up on the account (`quota`) or the model (`model_missing`),
drop `max_tokens` once (`output_limit`), return at once (`bad_request`,
`context_exceeded`), or retry in place (`transient`, `unknown`).

Order matters, and each step is there because a real body would be misread without it:

1. quota first: OpenAI answers an empty account with **429** `insufficient_quota`, and
   OpenRouter's 402 says "requires more credits, or fewer max_tokens" — neither is a rate
   limit nor an output ceiling;
2. output_limit before the 429 check: a 429 (or 400) whose body says max_tokens is above the
   model's or tier's ceiling is a configuration problem that no amount of waiting cures;
   vLLM's and OpenAI's "N in the messages, M in the completion" count too, as dropping
   max_tokens is what makes such a request fit;
3. 429 → rate_limited; 401/403 or "invalid api key" → auth;
4. context_exceeded, then model_missing (404 or "model ... not found"), as the codes do;
5. 408, 5xx and 529 (Anthropic's "overloaded") → transient; other 4xx → bad_request (the
   request's fault, as for the code: BAD_REQUEST on branch i9-attempts).
"""

from __future__ import annotations

import re

from services.errors import Reason

__all__ = ["reason_of", "says_context_exceeded", "says_model_missing"]

_QUOTA = re.compile(
    r"insufficient[ _](quota|balance|credits?|funds)|exceeded your current quota"
    r"|more credits|credit balance is too low|billing[ _]hard[ _]limit|out of credits",
)
_QUOTA_CODES = frozenset({"insufficient_quota", "insufficient_credits", "billing_error"})
# Not "output tokens" alone: Anthropic's 429 "... of 8,000 output tokens per minute" is a rate.
_OUTPUT_LIMIT = re.compile(
    r"max_(completion_|output_|new_)?tokens|maximum (allowed number of )?output tokens"
    r"|requested \d+ output tokens|\b(in|for) the completion\b|at most \d+ completion tokens",
)
_AUTH = re.compile(
    r"(invalid|incorrect|wrong|revoked|expired)\W+(x-)?api[ _-]?key"
    r"|api key (is )?(invalid|not valid)|authentication fail|unauthori[sz]ed"
    r"|invalid[ _]token|no api key",
)
_AUTH_CODES = frozenset(
    {"invalid_api_key", "authentication_error", "permission_error", "unauthorized"}
)
# Ollama, vLLM ("maximum context length", "longer than the maximum model length"), OpenAI,
# llama.cpp ("exceeds the available context size"), Anthropic ("prompt is too long").
_CONTEXT = re.compile(r"context[ _](length|size|window)|maximum model length|prompt is too long")
_CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error"})
_MODEL_MISSING = re.compile(
    r"model\b.{0,200}?\b(not found|does not exist|not exist)|no models? (is )?loaded"
    r"|unknown model",
)
_MODEL_MISSING_CODES = frozenset({"model_not_found"})
_TRANSIENT_STATUS = frozenset({408, 425, 529})


def reason_of(status: int | None, message: str, type_: str = "", code: str = "") -> Reason:
    """The reason one refusal carries.

    Args:
        status: the HTTP status; None for an error that arrived inside a 200 stream (a
            numeric `code` in the body stands in for it, as OpenRouter and llama.cpp send).
        message: the body's error message (or its text).
        type_: the body's error `type`, if any.
        code: the body's error `code`, if any.
    """
    if status is None and code.isdigit():
        status = int(code)
    labels = {type_.lower(), code.lower()}
    message = message.lower()  # the patterns are lower case: cheaper than re.IGNORECASE
    if status == 402 or not labels.isdisjoint(_QUOTA_CODES) or _QUOTA.search(message):
        return Reason.QUOTA
    if status in (None, 400, 413, 422, 429) and _OUTPUT_LIMIT.search(message):
        return Reason.OUTPUT_LIMIT
    if status == 429:
        return Reason.RATE_LIMITED
    if status in (401, 403) or not labels.isdisjoint(_AUTH_CODES) or _AUTH.search(message):
        return Reason.AUTH
    if says_context_exceeded(message, type_, code):
        return Reason.CONTEXT_EXCEEDED
    if status == 404 or says_model_missing(message, code):
        return Reason.MODEL_MISSING
    if status is not None and (status >= 500 or status in _TRANSIENT_STATUS):
        return Reason.TRANSIENT
    if status is not None and 400 <= status < 500:
        return Reason.BAD_REQUEST
    return Reason.UNKNOWN


def says_context_exceeded(message: str, type_: str = "", code: str = "") -> bool:
    """The body says the prompt is longer than the model's window (code CONTEXT_EXCEEDED too)."""
    if code.lower() in _CONTEXT_CODES or type_.lower() in _CONTEXT_CODES:
        return True
    return bool(_CONTEXT.search(message.lower()))


def says_model_missing(message: str, code: str = "") -> bool:
    """The body says the model is not there (code MODEL_NOT_FOUND too)."""
    return code.lower() in _MODEL_MISSING_CODES or bool(_MODEL_MISSING.search(message.lower()))
