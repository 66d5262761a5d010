"""What one cloud outcome means: the next action, and what the health board should remember.

`next_cloud_action` is the table nested behind the router's one decision
(router/attempts/decision.py `next_action`): the dispatcher judges a cloud chain's outcome
like any target's, and inside the chain this table decides between its (provider, key,
model) calls. Pure, table-tested, numbers from `FailoverSettings`. By reason:

| outcome                 | board                                   | action                    |
|-------------------------|-----------------------------------------|---------------------------|
| ok                      | key and model healthy again             | return                    |
| rate_limited            | cool (provider, key), Retry-After wins  | next key                  |
| auth                    | cool (provider, key)                    | next key                  |
| quota                   | cool (provider, key) for quota_cooldown | next key                  |
| model_missing           | disable the model                       | next model                |
| output_limit            | —                                       | drop max_tokens, retry    |
|   … again, or none sent | —                                       | return                    |
| bad_request, context    | —                                       | return (failover hides it)|
| transient               | retries left in budget: —               | retry in place after wait |
|   … retries spent       | cool the model                          | next model                |
| unknown                 | as transient, but never marks the model | retry, then next model    |
| DEADLINE / CANCELLED    | — (the caller's budget, the caller)     | stop                      |

"Every key of the model is out" (quota or auth on all of them → disable the model) is read
from the board after each key failure (`disable_if_keys_all_out`); `apply_effects` writes
the rest. `router/cloud/chain.py` `run_cloud_chain` is the loop around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from router.cloud.chains import CloudTarget, keys_all_out
from router.cloud.cooldowns import CloudHealthBoard, FailoverSettings
from services.errors import ErrorCode, InferbusError, Reason

__all__ = [
    "AttemptState",
    "CloudDecision",
    "Effect",
    "apply_effects",
    "disable_if_keys_all_out",
    "next_cloud_action",
    "output_limit_error",
]

Action = Literal["return", "retry_in_place", "next_key", "next_model", "stop"]
EffectKind = Literal[
    "key_ok", "model_ok", "cool_key", "cool_key_for", "cool_model", "disable_model"
]


@dataclass(frozen=True, slots=True)
class Effect:
    """One write to the health board for the target that produced the outcome."""

    kind: EffectKind
    reason: Reason | None = None
    retry_after_s: float | None = None
    seconds: float | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class AttemptState:
    """What this request has already done with the current target.

    Args:
        retries_in_place: transient/unknown retries already made on this (key, model).
        max_tokens_sent: whether the request still carries max_tokens.
        max_tokens_dropped: whether max_tokens was already dropped once in this request.
        remaining_budget_s: the request's budget left now.
    """

    retries_in_place: int = 0
    max_tokens_sent: bool = False
    max_tokens_dropped: bool = False
    remaining_budget_s: float = float("inf")


@dataclass(frozen=True, slots=True)
class CloudDecision:
    """What to do next; on "return"/"stop" with a failure, answer `error` when set, else
    the outcome's own error."""

    action: Action
    effects: tuple[Effect, ...] = ()
    delay_s: float = 0.0
    drop_max_tokens: bool = False
    error: InferbusError | None = None


_OK = CloudDecision("return", (Effect("key_ok"), Effect("model_ok")))
_RETURN = CloudDecision("return")
_STOP = CloudDecision("stop")


def next_cloud_action(
    error: InferbusError | None, state: AttemptState, settings: FailoverSettings
) -> CloudDecision:
    """The decision after one attempt; `error` None is a success.

    With the budget spent, whatever would have come next becomes "stop" — but what the
    outcome says about the key or model is still remembered.
    """
    if error is None:
        return _OK
    if error.code in (ErrorCode.DEADLINE_EXCEEDED, ErrorCode.CANCELLED):
        return _STOP
    decision = _by_reason(error, state, settings)
    if state.remaining_budget_s <= 0 and decision.action != "return":
        return CloudDecision("stop", decision.effects)
    return decision


def _by_reason(
    error: InferbusError, state: AttemptState, settings: FailoverSettings
) -> CloudDecision:
    reason = error.reason or Reason.UNKNOWN
    message = error.message
    if reason == Reason.RATE_LIMITED:
        retry_after_s = None if error.retry_after_ms is None else error.retry_after_ms / 1000
        cool = Effect("cool_key", reason, retry_after_s=retry_after_s, message=message)
        return CloudDecision("next_key", (cool,))
    if reason == Reason.AUTH:
        return CloudDecision("next_key", (Effect("cool_key", reason, message=message),))
    if reason == Reason.QUOTA:
        cool = Effect("cool_key_for", reason, seconds=settings.quota_cooldown_s, message=message)
        return CloudDecision("next_key", (cool,))
    if reason == Reason.MODEL_MISSING:
        return CloudDecision("next_model", (Effect("disable_model", reason, message=message),))
    if reason == Reason.OUTPUT_LIMIT:
        if state.max_tokens_sent and not state.max_tokens_dropped:
            return CloudDecision("retry_in_place", drop_max_tokens=True)
        if state.max_tokens_dropped:
            return CloudDecision("return", error=output_limit_error(error))
        return _RETURN
    if reason in (Reason.BAD_REQUEST, Reason.CONTEXT_EXCEEDED):
        return _RETURN
    # transient, unknown: retry the same key in place while retries and budget last.
    if state.retries_in_place < settings.transient_retries:
        wait_s = settings.transient_backoff_s(state.retries_in_place)
        if wait_s < state.remaining_budget_s:
            return CloudDecision("retry_in_place", delay_s=wait_s)
    if reason == Reason.TRANSIENT:
        return CloudDecision("next_model", (Effect("cool_model", reason, message=message),))
    return CloudDecision("next_model")  # unknown: advance without marking the model


def apply_effects(
    board: CloudHealthBoard, target: CloudTarget, effects: tuple[Effect, ...], now: float
) -> None:
    """Write a decision's effects for `target` to the board."""
    provider, key_id, model = target.provider, target.key_id, target.model.model
    for effect in effects:
        reason = effect.reason or Reason.UNKNOWN
        if effect.kind == "key_ok":
            board.key_succeeded(provider, key_id, now)
        elif effect.kind == "model_ok":
            board.model_succeeded(provider, model, now)
        elif effect.kind == "cool_key":
            board.cool_key(provider, key_id, reason, now, retry_after_s=effect.retry_after_s)
        elif effect.kind == "cool_key_for":
            board.cool_key(provider, key_id, reason, now, seconds=effect.seconds)
        elif effect.kind == "cool_model":
            board.cool_model(provider, model, reason, now)
        else:
            board.disable_model(provider, model, reason, now, effect.message)


def disable_if_keys_all_out(
    board: CloudHealthBoard, target: CloudTarget, key_ids: Sequence[str], now: float
) -> Reason | None:
    """After a key failure: quota or auth on every key of the provider disables the model.

    Returns the reason it was disabled with, None when some key is still usable or only
    rate-limited.
    """
    reason = keys_all_out(target.provider, key_ids, board, now)
    if reason is not None:
        board.disable_model(
            target.provider, target.model.model, reason, now, f"{reason} on every key"
        )
    return reason


def output_limit_error(error: InferbusError) -> InferbusError:
    """The clear answer when max_tokens is above the ceiling even after dropping it once."""
    return InferbusError(
        ErrorCode.BAD_REQUEST,
        "the request's max_tokens is above this model's or tier's output ceiling, and "
        f"retrying without it failed too; lower max_tokens. Provider said: {error.message}",
        retryable=False,
        reason=Reason.OUTPUT_LIMIT,
    )
