"""Limits counted with a clock passed in, and the Retry-After a turned-away call gets."""

from __future__ import annotations

import pytest

from router.admission.limits import (
    DrainRate,
    SlidingWindow,
    TenantUsage,
    check_arrival,
    queue_refusal,
    queue_retry_after_ms,
)
from router.admission.tenants import Tenant, TenantLimits


def test_a_window_forgets_what_is_older_than_a_minute() -> None:
    window = SlidingWindow(60.0)
    window.add(0.0, 10)
    window.add(30.0, 5)
    assert window.total(59.9) == 15
    assert window.total(60.0) == 5
    assert window.total(90.0) == 0


@pytest.mark.parametrize(
    ("admitted_at", "now", "rpm", "refused", "retry_ms"),
    [
        ([], 0.0, 2, False, None),
        ([0.0], 1.0, 2, False, None),
        ([0.0, 1.0], 2.0, 2, True, 58_000),  # the first ages out at 60 s
        ([0.0, 1.0], 60.5, 2, False, None),
        ([10.0, 20.0, 30.0], 40.0, 3, True, 30_000),
        ([0.0], 0.0, 0, True, 60_000),  # rpm 0: nothing is ever admitted
    ],
)
def test_rpm_counts_admissions_in_the_last_minute(
    admitted_at: list[float], now: float, rpm: int, refused: bool, retry_ms: int | None
) -> None:
    usage = TenantUsage()
    for at in admitted_at:
        usage.requests.add(at)
    refusal = check_arrival("a", TenantLimits(rpm=rpm), usage, now)
    assert (refusal is not None) == refused
    if refusal is not None:
        assert refusal.limit == "rpm"
        assert refusal.retry_after_ms == retry_ms
        assert "rpm" in refusal.message


@pytest.mark.parametrize(
    ("used", "now", "tpm", "refused", "retry_ms"),
    [
        ([(0.0, 500)], 1.0, 1000, False, None),
        ([(0.0, 600), (10.0, 600)], 20.0, 1000, True, 40_000),  # under once the first ages
        ([(0.0, 400), (10.0, 400), (20.0, 400)], 30.0, 1000, True, 30_000),
        ([(0.0, 5000)], 59.0, 1000, True, 1000),
        ([(0.0, 5000)], 61.0, 1000, False, None),
    ],
)
def test_tpm_counts_tokens_from_answers_in_the_last_minute(
    used: list[tuple[float, int]], now: float, tpm: int, refused: bool, retry_ms: int | None
) -> None:
    usage = TenantUsage()
    for at, tokens in used:
        usage.tokens.add(at, tokens)
    refusal = check_arrival("a", TenantLimits(tpm=tpm), usage, now)
    assert (refusal is not None) == refused
    if refusal is not None:
        assert refusal.limit == "tpm"
        assert refusal.retry_after_ms == retry_ms


def test_max_concurrent_holds_the_tenant_back_not_away() -> None:
    usage = TenantUsage(running=2)
    assert not usage.may_start(TenantLimits(max_concurrent=2))
    assert usage.may_start(TenantLimits(max_concurrent=3))
    assert usage.may_start(TenantLimits())
    assert check_arrival("a", TenantLimits(max_concurrent=2), usage, 0.0) is None


@pytest.mark.parametrize(
    ("starts", "now", "waiting", "expected_ms"),
    [
        ([], 0.0, 10, 1000),  # never drained yet: the given default
        ([0.0], 0.0, 10, 1000),
        ([0.0, 0.5, 1.0, 1.5, 2.0], 2.0, 10, 5000),  # 2 per second, 10 waiting
        ([0.0, 0.5, 1.0, 1.5, 2.0], 2.0, 0, 500),  # at least one must leave
        ([0.0, 0.001, 0.002], 0.002, 1, 100),  # the floor
    ],
)
def test_a_full_queue_sends_callers_back_after_its_drain_time(
    starts: list[float], now: float, waiting: int, expected_ms: int
) -> None:
    rate = DrainRate()
    for at in starts:
        rate.started(at)
    assert queue_retry_after_ms(waiting, rate.per_s(now), unknown_ms=1000) == expected_ms


@pytest.mark.parametrize(
    ("max_queued", "queued", "waiting", "router_max", "refused_by"),
    [
        (None, 50, 50, 100, None),
        (2, 1, 1, 100, None),
        (2, 2, 2, 100, "max_queued"),
        (0, 0, 0, 100, "max_queued"),  # this tenant never waits
        (None, 3, 100, 100, "queue"),
        (5, 3, 100, 100, "queue"),
    ],
)
def test_a_call_that_must_wait_joins_the_line_only_within_both_bounds(
    max_queued: int | None, queued: int, waiting: int, router_max: int, refused_by: str | None
) -> None:
    tenant = Tenant("a", "batch", limits=TenantLimits(max_queued=max_queued))
    refusal = queue_refusal(
        tenant, queued=queued, waiting=waiting, in_lane=4, max_queued=router_max, drains_per_s=2.0
    )
    assert (refusal.limit if refusal else None) == refused_by
    if refusal is not None:
        answer = refusal.answer("job-1")
        assert answer.error is not None
        assert answer.error.code == "BUSY"
        assert answer.error.message.startswith(f"{refused_by}:")
        assert answer.error.retry_after_ms == refusal.retry_after_ms >= 100
