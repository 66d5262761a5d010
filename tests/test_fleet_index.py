"""The fleet index: tables of record events, equal picks to a slow full scan, spread, pruning.

The reference (`reference_best`) is the plainest correct way, kept here on purpose: rebuild a
candidate for every model on every fresh node, then rank them all. On randomized fleets the
index must pick a candidate the reference ranks best (and, where few nodes are equal, the
least loaded of them).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pydantic
import pytest

from router.attempts.board import BreakerBoard
from router.fleet.candidates import Candidate
from router.fleet.index import FleetIndex, Taken
from router.fleet.views import servers_of
from router.selection.picking import SCAN_LIMIT
from router.selection.profiles import HardDefault, SelectionConfig
from router.selection.select import select
from services.capabilities import Capabilities, Load, ModelType, ServedModel
from services.wire import slot_kind


def model(
    name: str, type: ModelType = "llm", *, running: bool = False, size: float = 4.0
) -> ServedModel:
    return ServedModel(name=name, type=type, runtime="ollama", running=running, size_gb=size)


def record(
    node: str,
    *models: ServedModel,
    seq: int = 1,
    instance: str = "run-1",
    ttl_s: float = 30.0,
    llm: tuple[int, int] = (0, 4),
    ts: float = 1_700_000_000.0,
) -> Capabilities:
    return Capabilities(
        node_id=node,
        version="test",
        seq=seq,
        instance=instance,
        ts=ts,
        ttl_s=ttl_s,
        served_models=models,
        load={
            "llm": Load(inflight=llm[0], capacity=llm[1]),
            "vision": Load(inflight=0, capacity=1),
        },
    )


def servers(index: FleetIndex, name: str) -> set[str]:
    return servers_of(index, name)


# ── intake tables ──────────────────────────────────────────────────────────────────────


Event = tuple[float, Capabilities]
LLAMA, QWEN = model("llama3:8b"), model("qwen2.5:7b")
RUNNING_LLAMA = model("llama3:8b", running=True)


@pytest.mark.parametrize(
    ("events", "sweep_at", "expected_taken", "expected_servers"),
    [
        pytest.param([(0, record("a", LLAMA))], 1, [Taken.NEW], {"llama3:8b": {"a"}}, id="added"),
        pytest.param(
            [(0, record("a", LLAMA)), (1, record("a", QWEN, seq=2))],
            2,
            [Taken.NEW, Taken.CHANGED],
            {"llama3:8b": set(), "qwen2.5:7b": {"a"}},
            id="changed-models-diffed",
        ),
        pytest.param(
            [(0, record("a", LLAMA)), (1, record("a", LLAMA, seq=2, llm=(3, 4), ts=9e9))],
            2,
            [Taken.NEW, Taken.LOAD_ONLY],
            {"llama3:8b": {"a"}},
            id="load-and-ts-only",
        ),
        pytest.param(
            [(0, record("a", LLAMA)), (1, record("a", RUNNING_LLAMA, seq=2))],
            2,
            [Taken.NEW, Taken.CHANGED],
            {"llama3:8b": {"a"}},
            id="running-moves-bucket",
        ),
        pytest.param(
            [(0, record("a", LLAMA, ttl_s=10))], 11, [Taken.NEW], {"llama3:8b": set()}, id="stale"
        ),
        pytest.param(
            [(0, record("a", LLAMA, ttl_s=10)), (5, record("a", LLAMA, seq=2, ttl_s=10))],
            11,
            [Taken.NEW, Taken.LOAD_ONLY],
            {"llama3:8b": {"a"}},
            id="heartbeat-keeps-fresh",
        ),
        pytest.param(
            [(0, record("a", LLAMA, seq=5)), (1, record("a", QWEN, seq=4))],
            2,
            [Taken.NEW, Taken.OUT_OF_ORDER],
            {"llama3:8b": {"a"}, "qwen2.5:7b": set()},
            id="older-seq-same-run-ignored",
        ),
        pytest.param(
            [(0, record("a", LLAMA, seq=5)), (1, record("a", QWEN, seq=1, instance="run-2"))],
            2,
            [Taken.NEW, Taken.CHANGED],
            {"llama3:8b": set(), "qwen2.5:7b": {"a"}},
            id="restarted-worker-accepted",
        ),
    ],
)
def test_records_update_the_index(
    events: Sequence[Event],
    sweep_at: float,
    expected_taken: list[Taken],
    expected_servers: dict[str, set[str]],
) -> None:
    index = FleetIndex()
    taken = [index.take(rec, at) for at, rec in events]
    index.sweep(sweep_at)
    assert taken == expected_taken
    assert {name: servers(index, name) for name in expected_servers} == expected_servers


def test_stale_node_is_revived_by_its_next_record_and_gone_after_the_drop_time() -> None:
    index = FleetIndex(drop_after_ttls=3)
    forgotten: list[str] = []
    index.on_forget(forgotten.append)
    index.take(record("a", LLAMA, ttl_s=10), 0)
    index.sweep(11)
    assert not index.live("a", 11)
    assert servers(index, "llama3:8b") == set()
    assert index.take(record("a", LLAMA, seq=2, ttl_s=10), 12) is Taken.REVIVED
    assert servers(index, "llama3:8b") == {"a"}
    index.sweep(12 + 11)
    assert "a" in index.nodes  # stale, shown, not yet forgotten
    index.sweep(12 + 31)
    assert "a" not in index.nodes
    assert index.node_ids == []
    assert forgotten == ["a"]


def test_a_node_heard_every_second_stays_fresh_and_goes_stale_a_ttl_after_its_last_record() -> None:
    index = FleetIndex(drop_after_ttls=10)
    for second in range(10):
        index.take(record("a", LLAMA, seq=second + 1, ttl_s=3), second)
        index.sweep(second + 0.5)
        assert index.live("a", second + 0.5)
        assert servers(index, "llama3:8b") == {"a"}
    index.sweep(9 + 2.9)
    assert servers(index, "llama3:8b") == {"a"}
    index.sweep(9 + 3.1)
    assert servers(index, "llama3:8b") == set()
    index.sweep(9 + 29.9)
    assert "a" in index.nodes
    index.sweep(9 + 30.1)
    assert "a" not in index.nodes


def test_a_shorter_ttl_brings_staleness_forward_and_a_record_after_staleness_revives() -> None:
    index = FleetIndex(drop_after_ttls=10)
    index.take(record("a", LLAMA, ttl_s=30), 0)
    index.take(record("a", LLAMA, seq=2, ttl_s=3), 1)
    index.sweep(4.5)
    assert servers(index, "llama3:8b") == set()
    assert index.take(record("a", LLAMA, seq=3, ttl_s=30), 5) is Taken.REVIVED
    index.sweep(30)  # the first record's expiry: long superseded
    assert servers(index, "llama3:8b") == {"a"}
    index.sweep(35.5)
    assert servers(index, "llama3:8b") == set()


def test_unswept_node_past_its_ttl_is_never_selected() -> None:
    index = FleetIndex()
    index.take(record("a", LLAMA, ttl_s=10), 0)
    assert (
        select(SelectionConfig(hard_default=None), index, request_model="llama3:8b", now=11) is None
    )


@pytest.mark.parametrize(
    ("limits", "records", "expected"),
    [
        pytest.param(
            {"max_models_per_node": 2},
            [record("a", LLAMA, QWEN, model("x"))],
            [Taken.TOO_MANY_MODELS],
            id="too-many-models",
        ),
        pytest.param(
            {"max_nodes": 2},
            [record("a", LLAMA), record("b", LLAMA), record("c", LLAMA), record("a", QWEN, seq=2)],
            [Taken.NEW, Taken.NEW, Taken.FLEET_FULL, Taken.CHANGED],
            id="fleet-full-refuses-new-nodes-only",
        ),
    ],
)
def test_bounds_refuse_records(
    limits: dict[str, Any], records: list[Capabilities], expected: list[Taken]
) -> None:
    index = FleetIndex(**limits)
    assert [index.take(rec, 0) for rec in records] == expected


# ── equal results to a slow full scan ──────────────────────────────────────────────────

STAND_INS = {"llm": ("llm", "code"), "code": ("code", "llm"), "vision": ("vision",)}
POOL: list[tuple[str, ModelType, tuple[float, ...]]] = [
    ("llama3:8b", "llm", (4.7, 5.0)),
    ("llama3:70b", "llm", (40.0,)),
    ("qwen2.5:7b", "llm", (4.7,)),
    ("qwen2.5-coder:7b", "code", (4.7,)),
    ("moondream:1.8b", "vision", (1.7,)),
    ("minicpm-v:8b", "vision", (5.5,)),
    ("phi3:mini", "llm", (2.2,)),
]


def reference_candidates(index: FleetIndex, now: float) -> list[Candidate]:
    """The old `candidates_of`: every model on every fresh node (O(fleet))."""
    found = []
    for node, entry in index.nodes.items():
        if entry.stale(now):
            continue
        for served in entry.record.served_models:
            kind = slot_kind(served.type)
            inflight, capacity = index.load(node, kind)  # the record's moved by the router's own
            found.append(
                Candidate(
                    name=served.name,
                    type=served.type,
                    node=node,
                    local=node == index.local_node,
                    node_age_s=0,
                    runtime=served.runtime,
                    running=served.running,
                    size_gb=served.size_gb,
                    inflight=inflight,
                    capacity=capacity,
                )
            )
    return found


Rank = Callable[[Candidate], tuple[Any, ...]]


def best_rank(c: Candidate) -> tuple[Any, ...]:
    return (not c.running, -(c.size_gb or 0.0), not c.local)


def prefer_rank(pref: str) -> Rank:
    return lambda c: (not c.local, c.name != pref, not c.running, -(c.size_gb or 0.0))


def reference_top(pool: list[Candidate], rank: Rank) -> list[Candidate]:
    unsaturated = {c.name for c in pool if not c.saturated}
    eligible = [c for c in pool if not c.saturated or c.name not in unsaturated]
    best = min(rank(c) for c in eligible)
    return [c for c in eligible if rank(c) == best]


def reference_best(
    candidates: list[Candidate], required: str, prefer: tuple[str, ...], bare: bool
) -> list[Candidate]:
    """Every candidate a plain full scan ranks best (empty: no fleet pick)."""
    wanted = STAND_INS[required]
    typed = [c for c in candidates if c.type in wanted]
    if not typed:
        return []
    best_pool = [c for c in typed if c.type == wanted[0]] or typed
    for pref in prefer:
        if pref == "*":
            return reference_top(best_pool, best_rank)
        matches = [c for c in typed if pref in c.name]
        if matches:
            return reference_top(matches, prefer_rank(pref))
    return [] if bare else reference_top(best_pool, best_rank)


def random_fleet(rng: random.Random, nodes: int, now: float) -> FleetIndex:
    index = FleetIndex(local_node="node-0" if rng.random() < 0.5 else None)
    for i in range(nodes):
        picked = rng.sample(POOL, rng.randint(1, 4))
        served = [
            model(name, kind, running=rng.random() < 0.5, size=rng.choice(sizes))
            for name, kind, sizes in picked
        ]
        capacity = rng.choice((1, 2, 4))
        received = now - rng.choice((1.0, 1.0, 1.0, 40.0))  # a quarter of them stale
        index.take(record(f"node-{i}", *served, llm=(rng.randint(0, capacity), capacity)), received)
    for _ in range(nodes // 2):  # some re-announce with other models, some with load only
        node = f"node-{rng.randrange(nodes)}"
        held = index.nodes[node].record
        served = list(held.served_models)
        if rng.random() < 0.5:
            name, kind, sizes = rng.choice(POOL)
            served = [m for m in served if m.name != name] + [model(name, kind, size=sizes[0])]
        capacity = held.load["llm"].capacity
        index.take(
            record(node, *served, seq=held.seq + 1, llm=(rng.randint(0, capacity), capacity)),
            now - 1.0,
        )
    for _ in range(nodes // 4):
        index.job_started(f"node-{rng.randrange(nodes)}", "llm")
    index.sweep(now)
    return index


QUERIES: list[tuple[str, dict[str, Any], str, tuple[str, ...], bool]] = [
    # (description, select kwargs, required type, prefer, bare request model)
    ("exact-llm", {"request_model": "llama3:8b"}, "llm", ("llama3:8b",), True),
    ("substring", {"request_model": "qwen"}, "llm", ("qwen",), True),
    (
        "vision-by-capability",
        {"request_model": "moondream:1.8b"},
        "vision",
        ("moondream:1.8b",),
        True,
    ),
    ("best-llm", {"request_model": "chat"}, "llm", ("not-served:1b",), False),
    ("best-vision", {"request_model": "eyes"}, "vision", ("*",), False),
]
CONFIG = SelectionConfig.model_validate(
    {
        "llm_profiles": {
            "chat": {"provider": "ollama", "model": "not-served:1b"},
            "eyes": {"provider": "ollama", "model": "llava:7b"},
        },
        "selection_policies": {"eyes": {"required_type": "vision", "prefer": ["*"]}},
        "hard_default": HardDefault().model_dump(),
    }
)


@pytest.mark.parametrize("nodes", [8, 60])
@pytest.mark.parametrize("seed", range(25))
def test_index_picks_what_the_full_scan_ranks_best(nodes: int, seed: int) -> None:
    rng = random.Random(seed)
    now = 1000.0
    index = random_fleet(rng, nodes, now)
    excluded = {f"node-{rng.randrange(nodes)}" for _ in range(nodes // 5)}
    for force_local in (False, True):
        candidates = [
            c
            for c in reference_candidates(index, now)
            if c.node not in excluded and (c.local or not force_local)
        ]
        for _label, kwargs, required, prefer, bare in QUERIES:
            expected = reference_best(candidates, required, prefer, bare)
            got = select(
                CONFIG,
                index,
                exclude_nodes=frozenset(excluded),
                force_local=force_local,
                now=now,
                rng=rng,
                **kwargs,
            )
            assert got is not None
            if not expected:
                assert got.source != "fleet"
                continue
            assert got.source == "fleet"
            assert got.node is not None
            acceptable = {(c.node, c.name): c for c in expected}
            assert (got.node, got.model) in acceptable
            if nodes <= SCAN_LIMIT:
                least = min(c.load_ratio for c in expected)
                assert acceptable[got.node, got.model].load_ratio == least


# ── spread ─────────────────────────────────────────────────────────────────────────────


def uniform_fleet(nodes: int, capacity: int = 4) -> FleetIndex:
    index = FleetIndex()
    for i in range(nodes):
        index.take(record(f"n{i:04d}", RUNNING_LLAMA, llm=(0, capacity)), 0)
    return index


@pytest.mark.parametrize(("nodes", "in_flight"), [(3, 1), (200, 1), (200, 8), (500, 32)])
def test_equal_nodes_share_a_popular_models_traffic(nodes: int, in_flight: int) -> None:
    """At c=1 every pick sees idle nodes; at c>1 the router's own counts steer too."""
    index = uniform_fleet(nodes)
    rng = random.Random(7)
    picks: Counter[str] = Counter()
    running: list[str] = []
    total = 60 * nodes
    for _ in range(total):
        got = select(CONFIG, index, request_model="llama3:8b", now=1.0, rng=rng)
        assert got is not None
        assert got.node is not None
        picks[got.node] += 1
        index.job_started(got.node, "llm")
        running.append(got.node)
        if len(running) >= in_flight:
            index.job_ended(running.pop(0), "llm")
    fair = total / nodes
    assert len(picks) == nodes
    assert max(picks.values()) <= 2 * fair
    assert min(picks.values()) >= fair / 3


def test_less_loaded_node_wins_among_equals() -> None:
    index = FleetIndex()
    index.take(record("busy", RUNNING_LLAMA, llm=(3, 4)), 0)
    index.take(record("idle", RUNNING_LLAMA, llm=(0, 4)), 0)
    rng = random.Random(1)
    picks = Counter(
        select(CONFIG, index, request_model="llama3:8b", now=1, rng=rng).node  # type: ignore[union-attr]
        for _ in range(50)
    )
    assert picks == {"idle": 50}


# ── state follows the fleet ────────────────────────────────────────────────────────────


def test_forgotten_node_loses_its_breakers_and_inflight_counts() -> None:
    index = FleetIndex(drop_after_ttls=2)
    board = BreakerBoard()
    index.on_forget(lambda node: board.forget(node, 0))
    for node in ("a", "b"):
        index.take(record(node, LLAMA, ttl_s=10), 0)
        for _ in range(3):
            board.record(node, "llm", "failure", 1)
    index.job_started("a", "llm")
    index.take(record("b", LLAMA, seq=2, ttl_s=10), 15)
    index.sweep(25)
    assert set(index.nodes) == {"b"}
    assert index.router_inflight == Counter()
    assert board.snapshot(25) == {"b": {"llm": "open"}}
    index.job_ended("a", "llm")  # the job outlived its node: no negative count appears
    assert index.router_inflight == Counter()


def test_finished_jobs_leave_no_zero_counts() -> None:
    index = uniform_fleet(2)
    index.job_started("n0000", "llm")
    index.job_ended("n0000", "llm")
    assert index.router_inflight == Counter()


# ── vision by capability ───────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", ["moondream:1.8b", "minicpm-v:8b"])
def test_a_named_vision_model_is_reached_by_the_type_its_runtime_reports(name: str) -> None:
    index = FleetIndex()
    index.take(record("eyes", model(name, "vision"), LLAMA), 0)
    got = select(SelectionConfig(hard_default=None), index, request_model=name, now=1)
    assert got is not None
    assert (got.model, got.node, got.type) == (name, "eyes", "vision")


def test_breaker_queries_answer_per_node_without_changing_state() -> None:
    board = BreakerBoard()
    for _ in range(3):
        board.record("gpu1", "code", "failure", 1)
    assert board.is_open("gpu1", "llm", 2)
    assert not board.is_open("gpu1", "vision", 2)
    assert not board.is_open("gpu2", "llm", 2)
    assert board.of_node("gpu1", 2) == {"llm": "open"}
    assert not board.is_open("gpu1", "llm", 200)  # half-open: the trial may go ...
    assert not board.is_open("gpu1", "llm", 200)  # ... and asking did not start it
    assert board.allows("gpu1", "llm", 200)
    board.forget("gpu1", 201)
    assert board.of_node("gpu1", 201) == {}


@pytest.mark.parametrize("ttl", ["Infinity", "NaN", "0", "1e9"])
def test_a_record_with_an_unbounded_ttl_is_refused(ttl: str) -> None:
    record = {"node_id": "n", "version": "1", "seq": 1, "ts": 0, "ttl_s": ttl, "runtimes": []}
    raw = json.dumps(record).replace(f'"{ttl}"', ttl)
    with pytest.raises(pydantic.ValidationError):
        Capabilities.model_validate_json(raw)


def _node_with_slots(index: FleetIndex, node: str, inflight: int, capacity: int, seq: int) -> None:
    record = Capabilities(
        node_id=node,
        version="t",
        seq=seq,
        ts=0.0,
        ttl_s=60.0,
        served_models=(ServedModel(name="m", type="llm", runtime="ollama"),),
        load={"llm": Load(inflight=inflight, capacity=capacity)},
    )
    index.take(record, 0.0)


def test_an_answer_of_the_routers_own_frees_its_slot_before_the_next_record() -> None:
    index = FleetIndex()
    _node_with_slots(index, "n", 0, 2, seq=1)
    index.job_started("n", "llm")
    index.job_started("n", "llm")
    _node_with_slots(index, "n", 2, 2, seq=2)  # the worker says full
    assert index.load("n", "llm") == (2, 2)
    index.job_ended("n", "llm")
    assert index.load("n", "llm") == (1, 2)  # not still full until the worker's next record
    group = index.group("m", "llm")
    assert group is not None
    assert "n" in group.unsaturated


def test_a_busy_answer_makes_the_node_full_until_its_next_record() -> None:
    index = FleetIndex()
    _node_with_slots(index, "n", 0, 2, seq=1)  # another router's jobs are not seen yet
    index.heard_busy("n", "llm")
    group = index.group("m", "llm")
    assert group is not None
    assert index.load("n", "llm") == (2, 2)
    assert "n" not in group.unsaturated
    _node_with_slots(index, "n", 1, 2, seq=2)  # a slot freed
    assert index.load("n", "llm") == (1, 2)
    assert "n" in group.unsaturated
