"""Model chains for cloud failover: which models a request may fall through, and what to try next.

    chain  = request model, request fallbacks, profile fallbacks, global fallbacks
             (trimmed, blanks dropped, first occurrence kept)        build_chain
    cloud  = the entries a provider claims, resolved to (provider, model id),
             one per (provider, model id)                          resolve_cloud_chain
    walk   = per model: skip it while cooling or disabled; try its provider's keys in
             rotation order, skipping cooling pairs and keys this request already used
             up for that model                                              next_target
    answer = everything cooling → NO_ROUTE with when the earliest cooldown ends;
             nothing left → the last failure, saying the chain is exhausted; both
             name each model's state and reason                      chain_states

Pure: the board is read, never written (router/cloud/actions.py decides the writes), and
the clock is passed in. A request's own progress is the `ChainCursor` it carries.
Fleet models in a chain (entries no provider claims) are the fleet's business: the router
serves the request's model in the building first and the cloud entries after it, as
"local first" requires (router/serving/dispatch.py, router/cloud/targets.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.cloud.cooldowns import CloudHealthBoard
from router.cloud.providers import CloudModel, ProviderConfig, resolve_cloud_model
from services.errors import ErrorCode, InferbusError, Reason

__all__ = [
    "AllCooling",
    "ChainCursor",
    "ChainExhausted",
    "CloudTarget",
    "ModelState",
    "all_cooling_error",
    "build_chain",
    "chain_exhausted_error",
    "chain_states",
    "keys_all_out",
    "next_target",
    "request_fallbacks",
    "resolve_cloud_chain",
]

# LiteLLM's request field is `fallbacks`; ours is `fallback_models`. Both are read.
FALLBACK_FIELDS = ("fallback_models", "fallbacks")
_DISABLING_KEY_REASONS = frozenset({Reason.QUOTA, Reason.AUTH})


def build_chain(
    request_model: str | None,
    request_fallbacks: Iterable[str] = (),
    profile_fallbacks: Iterable[str] = (),
    global_fallbacks: Iterable[str] = (),
) -> tuple[str, ...]:
    """The ordered, deduplicated model chain; blank entries are dropped."""
    seen: dict[str, None] = {}
    for name in (request_model or "", *request_fallbacks, *profile_fallbacks, *global_fallbacks):
        trimmed = name.strip()
        if trimmed:
            seen.setdefault(trimmed, None)
    return tuple(seen)


def request_fallbacks(body: Mapping[str, Any]) -> tuple[str, ...]:
    """A request's own fallbacks: `fallback_models`, then LiteLLM's `fallbacks`.

    Each item is a model name, or (LiteLLM) an object with a `model` name.

    Raises:
        InferbusError: BAD_REQUEST naming the field, for anything else.
    """
    found: list[str] = []
    for field_name in FALLBACK_FIELDS:
        value = body.get(field_name)
        if value is None:
            continue
        if not isinstance(value, list):
            raise InferbusError(
                ErrorCode.BAD_REQUEST, f"{field_name} must be a list of model names"
            )
        for index, item in enumerate(value):
            name = item.get("model") if isinstance(item, dict) else item
            if not isinstance(name, str):
                raise InferbusError(
                    ErrorCode.BAD_REQUEST,
                    f"{field_name}[{index}] must be a model name (or an object with 'model')",
                )
            found.append(name)
    return tuple(found)


def resolve_cloud_chain(
    chain: Iterable[str], providers: Mapping[str, ProviderConfig]
) -> tuple[CloudModel, ...]:
    """The chain's cloud entries, in order, one per (provider, model id)."""
    resolved: dict[tuple[str, str], CloudModel] = {}
    for name in chain:
        model = resolve_cloud_model(name, providers)
        if model is not None:
            resolved.setdefault((model.provider, model.model), model)
    return tuple(resolved.values())


@dataclass(frozen=True, slots=True)
class CloudTarget:
    """The next (provider, key, model) to try, and where it sits in the chain."""

    model_index: int
    model: CloudModel
    key_id: str

    @property
    def provider(self) -> str:
        return self.model.provider


@dataclass(frozen=True, slots=True)
class AllCooling:
    """Nothing was callable: every model or key is cooling or disabled (`until`: earliest)."""

    until: float | None


@dataclass(frozen=True, slots=True)
class ChainExhausted:
    """Every model was tried or skipped; `until` is the earliest cooldown end, if any."""

    until: float | None


@dataclass(slots=True)
class ChainCursor:
    """One request's progress along its chain: where it is and which keys it used up."""

    model_index: int = 0
    used: set[tuple[int, str]] = field(default_factory=set)  # (model index, key id)
    attempts: int = 0

    def key_done(self, target: CloudTarget) -> None:
        """This key is finished for this model in this request (next key next time)."""
        self.used.add((target.model_index, target.key_id))

    def model_done(self, target: CloudTarget) -> None:
        """This model is finished for this request (next model next time)."""
        self.model_index = max(self.model_index, target.model_index + 1)


def next_target(
    chain: Sequence[CloudModel],
    keys_of: Mapping[str, Sequence[str]],
    board: CloudHealthBoard,
    cursor: ChainCursor,
    now: float,
) -> CloudTarget | AllCooling | ChainExhausted:
    """The next target to try, or why there is none.

    Args:
        chain: the cloud chain (resolve_cloud_chain).
        keys_of: provider name → its key ids in rotation order (resolve_keys).
        board: the cloud health board, read only.
        cursor: this request's progress; advanced past models with no key left.
        now: monotonic seconds.
    """
    earliest: float | None = None

    def note(until: float | None) -> None:
        nonlocal earliest
        if until is not None and (earliest is None or until < earliest):
            earliest = until

    for index in range(cursor.model_index, len(chain)):
        model = chain[index]
        if not board.model_callable(model.provider, model.model, now):
            entry = board.model_entry(model.provider, model.model, now)
            note(entry.until if entry is not None else None)
            cursor.model_index = index + 1
            continue
        for key_id in keys_of.get(model.provider, ()):
            until = board.key_cooling_until(model.provider, key_id, now)
            note(until)  # keys this request cooled count too: they say when to come back
            if until is not None or (index, key_id) in cursor.used:
                continue
            cursor.attempts += 1
            return CloudTarget(index, model, key_id)
        cursor.model_index = index + 1
    return AllCooling(earliest) if cursor.attempts == 0 else ChainExhausted(earliest)


def keys_all_out(
    provider: str, key_ids: Iterable[str], board: CloudHealthBoard, now: float
) -> Reason | None:
    """`quota` or `auth` when *every* key of the provider is cooling for that kind of reason.

    Then the model is disabled with the reason (re-checked later) rather than retried at
    every key's next release. Keys cooling from a rate limit keep the model enabled.
    """
    reasons: list[Reason] = []
    for key_id in key_ids:
        entry = board.key_entry(provider, key_id, now)
        if entry is None or now >= entry.until or entry.reason not in _DISABLING_KEY_REASONS:
            return None
        reasons.append(entry.reason)
    if not reasons:
        return None
    return Reason.QUOTA if Reason.QUOTA in reasons else Reason.AUTH


@dataclass(frozen=True, slots=True)
class ModelState:
    """Where one model of the chain stands now, for the answer that says why none served.

    `state`: healthy, rechecking, cooling or disabled (the model itself), or "keys cooling"
    (the model is fine, every key of its provider is not); `reason` and `free_at` of
    whichever applies.
    """

    name: str  # provider/model
    state: str
    reason: Reason | None = None
    free_at: float | None = None

    def describe(self, now: float) -> str:
        if self.reason is None:
            return f"{self.name} {self.state}"
        left = "" if self.free_at is None else f", {max(0.0, self.free_at - now):.1f} s left"
        return f"{self.name} {self.state} ({self.reason}{left})"


def chain_states(
    chain: Sequence[CloudModel],
    keys_of: Mapping[str, Sequence[str]],
    board: CloudHealthBoard,
    now: float,
) -> tuple[ModelState, ...]:
    """Every model of the chain as the board sees it now."""
    return tuple(
        _model_state(model, keys_of.get(model.provider, ()), board, now) for model in chain
    )


def _model_state(
    model: CloudModel, key_ids: Sequence[str], board: CloudHealthBoard, now: float
) -> ModelState:
    name = f"{model.provider}/{model.model}"
    status = board.model_status(model.provider, model.model, now)
    entry = board.model_entry(model.provider, model.model, now)
    if entry is not None and status in ("cooling", "disabled"):
        return ModelState(name, status, entry.reason, entry.until)
    cooling = [
        cooled
        for key_id in key_ids
        if (cooled := board.key_entry(model.provider, key_id, now)) is not None
        and now < cooled.until
    ]
    if key_ids and len(cooling) == len(key_ids):
        soonest = min(cooling, key=lambda cooled: cooled.until)
        return ModelState(name, "keys cooling", soonest.reason, soonest.until)
    return ModelState(name, status)


def _states_text(states: Sequence[ModelState], now: float) -> str:
    return "; ".join(state.describe(now) for state in states)


def all_cooling_error(
    until: float | None, now: float, states: Sequence[ModelState] = ()
) -> InferbusError:
    """Nothing in the chain is callable: say what each model is waiting for, and when the
    earliest cooldown ends. The reason is the first model's (the one the caller asked
    for): rate_limited only when that is what keeps it out."""
    reason = next((state.reason for state in states if state.reason is not None), None)
    detail = f": {_states_text(states, now)}" if states else ""
    if until is None:
        return InferbusError(
            ErrorCode.NO_ROUTE,
            f"every model of the chain is disabled or has no key to try{detail}",
            reason=reason or Reason.UNKNOWN,
        )
    wait_ms = max(0, int((until - now) * 1000))
    return InferbusError(
        ErrorCode.NO_ROUTE,
        f"every key and model of the chain is cooling or disabled; the earliest is free in "
        f"{wait_ms} ms{detail}",
        retry_after_ms=wait_ms,
        reason=reason or Reason.RATE_LIMITED,
    )


def chain_exhausted_error(
    last: InferbusError | None,
    models_tried: int,
    states: Sequence[ModelState] = (),
    now: float = 0.0,
) -> InferbusError:
    """The chain ran out: the last failure, saying so (its code and reason kept), and
    where each model stands."""
    detail = f" [{_states_text(states, now)}]" if states else ""
    if last is None:
        return InferbusError(
            ErrorCode.NO_ROUTE, f"the model chain is exhausted{detail}", reason=Reason.UNKNOWN
        )
    return InferbusError(
        last.code,
        f"model chain exhausted ({models_tried} tried){detail}; last error: {last.message}",
        retryable=last.retryable,
        retry_after_ms=last.retry_after_ms,
        reason=last.reason,
    )
