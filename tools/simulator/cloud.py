"""The simulator playing a cloud provider: behaviour per API key, chosen by `Authorization`.

A test arms a behaviour for a key and talks to `/v1/chat/completions` with that key as its
bearer token (or `x-api-key`, as Anthropic clients send it):

    sim.set_key("key-a", KeyBehaviour("rate_limited", retry_after_s=30))
    sim.set_key("key-b", KeyBehaviour("ok"))

| kind               | answer                                                            |
|--------------------|-------------------------------------------------------------------|
| ok                 | answered as without a key                                         |
| rate_limited       | 429 + `Retry-After` (seconds, or an HTTP date), OpenAI's body     |
| revoked            | 401 `invalid_api_key` (OpenAI's body); `echo_key` repeats the key |
| no_balance         | 402 "Insufficient Balance" (DeepSeek's body)                      |
| model_missing      | 404 `model_not_found` for this key (a tier without the model)     |
| context_exceeded   | 400 `context_length_exceeded`                                     |
| max_tokens_ceiling | 400 "max_tokens is too large" when max_tokens > `ceiling`, else ok |
| server_error       | `status` (500 by default; 502/503/529 too) — with `count`, a burst |
| hang               | never answers                                                     |

`count` limits a behaviour to that many requests, after which the key answers normally:
"5xx bursts then recovery". With `require_keys`, a key nobody armed gets the 401. Bodies
follow the providers' real envelopes (see tests/test_reasons.py for their sources), so
the router's classifier reads the same reasons from the simulator as from the cloud.
"""

from __future__ import annotations

import email.utils
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

FAULTY_KEY_KINDS: frozenset[str] = frozenset(
    {
        "rate_limited",
        "revoked",
        "no_balance",
        "model_missing",
        "context_exceeded",
        "max_tokens_ceiling",
        "server_error",
        "hang",
    }
)
KEY_KINDS: frozenset[str] = FAULTY_KEY_KINDS | {"ok"}
_SERVER_ERROR_STATUSES = frozenset({500, 502, 503, 504, 529})


@dataclass(frozen=True, slots=True)
class KeyBehaviour:
    """How the simulated provider treats one API key.

    Args:
        kind: one of KEY_KINDS.
        count: requests it applies to; None means until changed.
        retry_after_s: rate_limited's Retry-After.
        retry_after_date: send Retry-After as an HTTP date instead of seconds.
        ceiling: max_tokens_ceiling's largest accepted max_tokens.
        status: server_error's HTTP status.
        echo_key: revoked's message repeats the key whole, as a careless server might:
            what the router must never pass on.
    """

    kind: str
    count: int | None = None
    retry_after_s: int = 1
    retry_after_date: bool = False
    ceiling: int = 4096
    status: int = 500
    echo_key: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KEY_KINDS:
            raise ValueError(f"kind must be one of {sorted(KEY_KINDS)}, got {self.kind!r}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count must be >= 1 or None, got {self.count}")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        if self.ceiling < 1:
            raise ValueError(f"ceiling must be >= 1, got {self.ceiling}")
        if self.status not in _SERVER_ERROR_STATUSES:
            raise ValueError(f"status must be one of {sorted(_SERVER_ERROR_STATUSES)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": self.count,
            "retry_after_s": self.retry_after_s,
            "retry_after_date": self.retry_after_date,
            "ceiling": self.ceiling,
            "status": self.status,
            "echo_key": self.echo_key,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> KeyBehaviour:
        """A behaviour from control-API JSON; ValueError names the bad field."""
        fields: dict[str, Any] = {"kind": payload.get("kind")}
        if not isinstance(fields["kind"], str):
            raise ValueError("kind is required")
        for name in ("count", "retry_after_s", "ceiling", "status"):
            value = payload.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer")
            fields[name] = value
        for name in ("retry_after_date", "echo_key"):
            flag = payload.get(name)
            if flag is not None:
                if not isinstance(flag, bool):
                    raise ValueError(f"{name} must be a boolean")
                fields[name] = flag
        return cls(**fields)


def parse_key_spec(spec: str) -> tuple[str, KeyBehaviour]:
    """The CLI's ``KEY=KIND[:field=value,...]``, e.g. ``key-a=rate_limited:retry_after_s=30``.

    Raises:
        ValueError: the spec is malformed; the message names the part.
    """
    key, equals, rest = spec.partition("=")
    if not equals or not key.strip():
        raise ValueError(f"--key {spec!r}: expected KEY=KIND[:field=value,...]")
    kind, _, options = rest.partition(":")
    payload: dict[str, Any] = {"kind": kind.strip()}
    for option in filter(None, (part.strip() for part in options.split(","))):
        name, eq, value = option.partition("=")
        if not eq:
            raise ValueError(f"--key {spec!r}: option {option!r} needs field=value")
        if name in ("retry_after_date", "echo_key"):
            payload[name] = value.lower() in ("1", "true", "yes")
            continue
        try:
            payload[name] = int(value)
        except ValueError:
            raise ValueError(f"--key {spec!r}: {name} must be an integer") from None
    unknown = set(payload) - {
        "kind",
        "count",
        "retry_after_s",
        "retry_after_date",
        "ceiling",
        "status",
        "echo_key",
    }
    if unknown:
        raise ValueError(f"--key {spec!r}: unknown field(s) {sorted(unknown)}")
    return key.strip(), KeyBehaviour.from_json(payload)


@dataclass(slots=True)
class _Armed:
    behaviour: KeyBehaviour
    remaining: int | None


class KeyTable:
    """Armed behaviours by key, and how many generation requests each key sent."""

    def __init__(self) -> None:
        self._armed: dict[str, _Armed] = {}
        self.calls: Counter[str] = Counter()
        self.require_keys = False

    def set(self, key: str, behaviour: KeyBehaviour) -> None:
        self._armed[key] = _Armed(behaviour, behaviour.count)

    def clear(self) -> None:
        self._armed.clear()
        self.require_keys = False

    def take(self, key: str | None) -> KeyBehaviour | None:
        """The behaviour for this request's key (using up one count); counts the call."""
        if key is None:
            return KeyBehaviour("revoked") if self.require_keys else None
        self.calls[key] += 1
        armed = self._armed.get(key)
        if armed is None:
            return KeyBehaviour("revoked") if self.require_keys else None
        if armed.remaining is not None:
            armed.remaining -= 1
            if armed.remaining <= 0:
                del self._armed[key]
        return armed.behaviour

    def snapshot(self) -> dict[str, Any]:
        return {
            "keys": {
                key: {**armed.behaviour.to_json(), "remaining": armed.remaining}
                for key, armed in self._armed.items()
            },
            "calls": dict(self.calls),
            "require_keys": self.require_keys,
        }


def key_of(request: web.Request) -> str | None:
    """The API key a request carries: `Authorization: Bearer …`, else `x-api-key`."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def _openai_error(
    status: int,
    message: str,
    kind: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _retry_after(behaviour: KeyBehaviour) -> str:
    if behaviour.retry_after_date:
        return email.utils.formatdate(time.time() + behaviour.retry_after_s, usegmt=True)
    return str(behaviour.retry_after_s)


def _requested_max_tokens(payload: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def refusal_for(
    behaviour: KeyBehaviour, payload: dict[str, Any], key: str | None = None
) -> web.Response | None:
    """The provider's refusal for this key and request, or None to answer normally.

    `hang` is not a refusal: the caller waits for the simulator to stop instead.
    """
    kind = behaviour.kind
    model = payload.get("model") if isinstance(payload.get("model"), str) else ""
    if kind == "rate_limited":
        message = (
            f"Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, "
            f"Requested 1. Please try again in {behaviour.retry_after_s}s."
        )
        return _openai_error(
            429,
            message,
            "requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": _retry_after(behaviour)},
        )
    if kind == "revoked":
        shown = key if behaviour.echo_key and key else "sk-***"
        message = f"Incorrect API key provided: {shown}. You can find your API key in your account."
        return _openai_error(401, message, "invalid_request_error", code="invalid_api_key")
    if kind == "no_balance":
        return _openai_error(
            402, "Insufficient Balance", "unknown_error", code="invalid_request_error"
        )
    if kind == "model_missing":
        message = f"The model `{model}` does not exist or you do not have access to it."
        return _openai_error(404, message, "invalid_request_error", code="model_not_found")
    if kind == "context_exceeded":
        message = (
            "This model's maximum context length is 8192 tokens. However, your messages "
            "resulted in 9000 tokens. Please reduce the length of the messages."
        )
        return _openai_error(
            400, message, "invalid_request_error", code="context_length_exceeded", param="messages"
        )
    if kind == "max_tokens_ceiling":
        asked = _requested_max_tokens(payload)
        if asked is None or asked <= behaviour.ceiling:
            return None
        message = (
            f"max_tokens is too large: {asked}. This model supports at most "
            f"{behaviour.ceiling} completion tokens, whereas you provided {asked}."
        )
        return _openai_error(400, message, "invalid_request_error", param="max_tokens")
    if kind == "server_error":
        message = "The server had an error while processing your request. Sorry about that!"
        return _openai_error(behaviour.status, message, "server_error")
    return None
