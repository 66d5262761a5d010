"""The line's order: priority classes with an anti-starvation share, weighted fair share
between tenants of a class, first come first served within a tenant."""

from __future__ import annotations

from collections import Counter

import pytest

from router.admission.fair_queue import FairQueue

CLASSES = ("interactive", "batch")


def drain(queue: FairQueue[str], count: int | None = None) -> list[str]:
    order: list[str] = []
    while count is None or len(order) < count:
        item = queue.pop()
        if item is None:
            break
        order.append(item)
    return order


def test_one_tenant_is_first_come_first_served() -> None:
    queue: FairQueue[str] = FairQueue(CLASSES, 0.0)
    for n in range(5):
        queue.push(f"a{n}", tenant="a", priority="interactive")
    assert drain(queue) == ["a0", "a1", "a2", "a3", "a4"]
    assert len(queue) == 0


def test_a_higher_class_goes_first_whatever_arrived_before() -> None:
    queue: FairQueue[str] = FairQueue(CLASSES, 0.0)
    for n in range(50):
        queue.push(f"b{n}", tenant="etl", priority="batch")
    queue.push("urgent", tenant="app", priority="interactive")
    assert queue.pop() == "urgent"


@pytest.mark.parametrize(
    ("share", "interactive_between_batch"),
    [(0.5, 2), (0.25, 4), (0.1, 10), (0.05, 20)],
)
def test_a_waiting_lower_class_gets_its_share_of_starts(
    share: float, interactive_between_batch: int
) -> None:
    queue: FairQueue[str] = FairQueue(CLASSES, share)
    for n in range(200):
        queue.push(f"i{n}", tenant="app", priority="interactive")
    for n in range(20):
        queue.push(f"b{n}", tenant="etl", priority="batch")
    order = drain(queue, 3 * (interactive_between_batch + 1))
    batch_at = [n for n, item in enumerate(order) if item.startswith("b")]
    assert batch_at == [
        k * (interactive_between_batch + 1) + interactive_between_batch for k in range(3)
    ]


def test_strict_priority_starves_nothing_only_when_asked_to() -> None:
    queue: FairQueue[str] = FairQueue(CLASSES, 0.0)
    for n in range(100):
        queue.push(f"i{n}", tenant="app", priority="interactive")
    queue.push("b0", tenant="etl", priority="batch")
    assert drain(queue)[-1] == "b0"


@pytest.mark.parametrize(
    "weights",
    [{"a": 1, "b": 2, "c": 4}, {"a": 1, "b": 1}, {"a": 0.5, "b": 1.5}, {"a": 3, "b": 1}],
)
def test_tenants_of_a_class_share_starts_by_weight(weights: dict[str, float]) -> None:
    queue: FairQueue[str] = FairQueue(CLASSES, 0.0)
    for tenant, weight in weights.items():
        for n in range(400):
            queue.push(f"{tenant}{n}", tenant=tenant, priority="interactive", weight=weight)
    total_weight = sum(weights.values())
    rounds = 280
    served = Counter(item.rstrip("0123456789") for item in drain(queue, rounds))
    for tenant, weight in weights.items():
        assert served[tenant] == pytest.approx(rounds * weight / total_weight, abs=2)


def test_a_tenant_that_cannot_start_is_passed_over_and_keeps_its_order() -> None:
    queue: FairQueue[str] = FairQueue(CLASSES, 0.0)
    for n in range(3):
        queue.push(f"a{n}", tenant="a", priority="interactive")
        queue.push(f"b{n}", tenant="b", priority="interactive")
    assert queue.pop(lambda tenant: tenant != "a") == "b0"
    assert queue.pop(lambda tenant: tenant != "a") == "b1"
    assert queue.pop(lambda tenant: False) is None
    assert drain(queue) == ["a0", "b2", "a1", "a2"]


def test_a_busy_answer_puts_the_call_back_at_the_head_of_its_place() -> None:
    queue: FairQueue[str] = FairQueue(CLASSES, 0.0)
    for n in range(3):
        queue.push(f"a{n}", tenant="a", priority="interactive")
        queue.push(f"b{n}", tenant="b", priority="interactive")
    first = queue.pop()
    assert first == "a0"
    queue.push_front(first, tenant="a", priority="interactive")
    assert queue.pop() == "a0"  # next again, not behind b0
    assert drain(queue) == ["b0", "a1", "b1", "a2", "b2"]


def test_a_call_that_leaves_is_gone_from_the_line() -> None:
    queue: FairQueue[str] = FairQueue(CLASSES, 0.1)
    queue.push("a0", tenant="a", priority="interactive")
    queue.push("b0", tenant="b", priority="batch")
    assert queue.remove("a0")
    assert not queue.remove("a0")
    assert "a0" not in queue
    assert [(item, cls, tenant) for item, cls, tenant in queue.waiting()] == [("b0", "batch", "b")]
    assert drain(queue) == ["b0"]


def test_an_unknown_class_waits_in_the_lowest() -> None:
    queue: FairQueue[str] = FairQueue(CLASSES, 0.0)
    queue.push("x", tenant="a", priority="gone-after-a-reload")
    queue.push("i", tenant="b", priority="interactive")
    assert drain(queue) == ["i", "x"]


def test_the_same_call_cannot_wait_twice() -> None:
    queue: FairQueue[str] = FairQueue(CLASSES, 0.0)
    queue.push("a", tenant="a", priority="batch")
    with pytest.raises(ValueError, match="already waiting"):
        queue.push("a", tenant="a", priority="batch")
