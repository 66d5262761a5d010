"""One request along its cloud chain: the loop around the pure decisions, I/O injected.

    next_target ─► attempt(target) ─► next_cloud_action ─► apply_effects ─┬─ return / stop
         ▲                                                               ├─ retry in place
         └──────────────── next key / next model ◄───────────────────────┘

`run_cloud_chain` owns no I/O of its own: the caller passes the `attempt`
(router/cloud/targets.py: one call through the provider's adapter, which raises
`InferbusError` with a reason; for a stream, "open it and wait for its first event", so
that failover happens before the first token and never after), the clock and the sleep.
It never waits past the deadline: a retry whose wait would cross it is not made, and every
attempt is told the budget left.
Every call is recorded as the answer's `route` lists every target's calls
(router/attempts/route.py `Attempt`: via "cloud", provider, key id, model, the outcome's
reason, ms on the chain's clock).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from router.attempts.route import Attempt, elapsed_ms
from router.cloud.actions import (
    AttemptState,
    apply_effects,
    disable_if_keys_all_out,
    next_cloud_action,
)
from router.cloud.chains import (
    AllCooling,
    ChainCursor,
    ChainExhausted,
    CloudTarget,
    ModelState,
    all_cooling_error,
    chain_exhausted_error,
    chain_states,
    next_target,
)
from router.cloud.cooldowns import CloudHealthBoard
from router.cloud.providers import CloudModel
from services.errors import ErrorCode, InferbusError, Reason

__all__ = ["Call", "ChainResult", "run_cloud_chain"]

Reply = TypeVar("Reply")
# (target, drop max_tokens?, budget left in s) → the reply; failures raise InferbusError.
Call = Callable[[CloudTarget, bool, float], Awaitable[Reply]]


@dataclass(slots=True)
class ChainResult(Generic[Reply]):
    """The reply (and which target gave it), or the error to answer; every call made."""

    reply: Reply | None = None
    target: CloudTarget | None = None
    error: InferbusError | None = None
    attempts: list[Attempt] = field(default_factory=list)


async def run_cloud_chain(
    chain: Sequence[CloudModel],
    keys_of: Mapping[str, Sequence[str]],
    board: CloudHealthBoard,
    attempt: Call[Reply],
    *,
    deadline: float,
    max_tokens_sent: bool,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ChainResult[Reply]:
    """Walk the chain until a reply, a return-at-once failure, the deadline or its end.

    Args:
        chain: the cloud chain (chains.resolve_cloud_chain).
        keys_of: provider → its key ids in rotation order.
        board: the cloud health board; this request's outcomes are written to it.
        attempt: calls one target (see the module docstring).
        deadline: the request's deadline on `clock`.
        max_tokens_sent: whether the request carries max_tokens (it may be dropped once).
    """
    settings = board.settings
    result: ChainResult[Reply] = ChainResult()
    cursor = ChainCursor()
    last: InferbusError | None = None
    dropped = False
    while True:
        found = next_target(chain, keys_of, board, cursor, clock())
        if isinstance(found, AllCooling | ChainExhausted):
            now = clock()
            states = chain_states(chain, keys_of, board, now)
            result.error = _final_error(found, last, result.attempts, states, now)
            return result
        target, retries = found, 0
        while True:
            left_s = deadline - clock()
            if left_s <= 0:
                result.error = last or InferbusError(
                    ErrorCode.DEADLINE_EXCEEDED, "the budget ran out before a cloud answer"
                )
                return result
            started = clock()
            error: InferbusError | None = None
            try:
                reply = await attempt(target, dropped, left_s)
            except InferbusError as failure:
                error = failure
            now = clock()
            result.attempts.append(
                Attempt(
                    via="cloud",
                    node=None,
                    model=target.model.model,
                    outcome="ok" if error is None else str(error.reason or error.code),
                    ms=elapsed_ms(started, now),
                    provider=target.provider,
                    key_id=target.key_id,
                )
            )
            state = AttemptState(
                retries_in_place=retries,
                max_tokens_sent=max_tokens_sent and not dropped,
                max_tokens_dropped=dropped,
                remaining_budget_s=deadline - now,
            )
            decision = next_cloud_action(error, state, settings)
            apply_effects(board, target, decision.effects, now)
            if error is None:
                result.reply, result.target = reply, target
                return result
            last = error
            if decision.action in ("return", "stop"):
                result.error = decision.error or error
                return result
            if decision.action == "retry_in_place":
                await sleep(decision.delay_s)
                retries += 1
                dropped = dropped or decision.drop_max_tokens
                continue
            if decision.action == "next_key":
                cursor.key_done(target)
                disable_if_keys_all_out(board, target, keys_of.get(target.provider, ()), now)
            else:
                cursor.model_done(target)
            break


def _final_error(
    found: AllCooling | ChainExhausted,
    last: InferbusError | None,
    attempts: Sequence[Attempt],
    states: Sequence[ModelState],
    now: float,
) -> InferbusError:
    """Nothing left to try: "all cooling, free again at …", or the last failure.

    A chain that ran out because its keys are now rate limited (this request's own 429s
    included) is "all cooling": the caller learns when to come back.
    """
    cooling = last is None or last.reason == Reason.RATE_LIMITED
    if isinstance(found, AllCooling) or (cooling and found.until is not None):
        return all_cooling_error(found.until, now, states)
    assert last is not None
    return chain_exhausted_error(last, len({(a.provider, a.model) for a in attempts}), states, now)
