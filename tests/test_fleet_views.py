"""`/nodes` pages and filters and the `/v1/models` list, read from a fleet index (pure)."""

from __future__ import annotations

import json

import pytest

from router.fleet.index import FleetIndex
from router.fleet.views import ModelsView, NodesQuery, nodes_page
from tests.test_fleet_index import LLAMA, QWEN, record


def fleet() -> FleetIndex:
    index = FleetIndex(local_node="n1")
    for i in range(1, 8):
        served = (LLAMA, QWEN) if i % 2 else (QWEN,)
        index.take(record(f"n{i}", *served, ttl_s=10), 0 if i != 7 else -20)
    return index


def ids(page: dict[str, object]) -> list[str]:
    return [node["node_id"] for node in page["nodes"]]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("params", "expected", "next_cursor"),
    [
        pytest.param({}, ["n1", "n2", "n3", "n4", "n5", "n6", "n7"], None, id="everything"),
        pytest.param({"limit": "3"}, ["n1", "n2", "n3"], "n3", id="first-page"),
        pytest.param({"limit": "3", "after": "n3"}, ["n4", "n5", "n6"], "n6", id="next-page"),
        pytest.param({"after": "n6"}, ["n7"], None, id="last-page"),
        pytest.param({"node": "n4"}, ["n4"], None, id="one-node"),
        pytest.param({"node": "nobody"}, [], None, id="unknown-node"),
        pytest.param({"model": "llama3:8b"}, ["n1", "n3", "n5"], None, id="by-model-fresh-only"),
        pytest.param({"stale": "true"}, ["n7"], None, id="stale-only"),
        pytest.param({"stale": "false", "limit": "2"}, ["n1", "n2"], "n2", id="fresh-paged"),
    ],
)
def test_nodes_pages_and_filters(
    params: dict[str, str], expected: list[str], next_cursor: str | None
) -> None:
    index = fleet()
    index.sweep(1)
    page = nodes_page(index, NodesQuery.of(params), now=1, breakers_of=lambda _node: {})
    assert ids(page) == expected
    assert page["next"] == next_cursor
    assert page["total"] == 7


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"stale": "maybe"}, "stale must be true or false"),
        ({"limit": "ten"}, "limit must be an integer"),
        ({"limit": "0"}, "limit must be 1..1000"),
    ],
)
def test_bad_nodes_parameters_are_named(params: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NodesQuery.of(params)


def test_models_list_follows_membership_not_heartbeats() -> None:
    index = fleet()
    view = ModelsView(index)
    cached = view.body()
    first = json.loads(cached)
    owners = {m["id"]: m["owned_by"] for m in first["data"]}
    assert owners == {"llama3:8b": "n1,n3,n5 +1 more", "qwen2.5:7b": "n1,n2,n3 +4 more"}
    index.take(record("n2", QWEN, seq=2, llm=(3, 4)), 2)  # load only: the same bytes
    assert view.body() is cached
    index.take(record("n2", LLAMA, seq=3), 3)
    after = {m["id"]: m["owned_by"] for m in json.loads(view.body())["data"]}
    assert after["llama3:8b"] == "n1,n2,n3 +2 more"
