"""`/api/tags` and `/api/ps` over the fleet index: every model once, every loaded model
with its node, rebuilt only when what they show changed."""

from __future__ import annotations

import json
from typing import Any

from router.fleet.index import FleetIndex
from router.fleet.ollama_views import KEPT_LOADED, ZERO_TIME, RunningView, TagsView
from services.capabilities import Capabilities, RunningModel, ServedModel

LLAMA = ServedModel(
    name="llama3.2:3b",
    type="llm",
    runtime="ollama",
    size_gb=2.02,
    running=True,
    family="llama",
    capabilities=("completion", "tools"),
    size_bytes=2_019_393_189,
    digest="a80c4f17",
    modified_at="2025-05-04T17:37:44.706015396-07:00",
    format="gguf",
    parameter_size="3.2B",
    quantization_level="Q4_K_M",
)
BARE = ServedModel(name="tiny", type="llm", runtime="llamacpp", running=True, context_window=512)


def record(
    node: str,
    models: tuple[ServedModel, ...],
    running: tuple[RunningModel, ...] = (),
    seq: int = 1,
) -> Capabilities:
    return Capabilities(
        node_id=node,
        version="t",
        seq=seq,
        ts=0.0,
        ttl_s=30.0,
        instance="i",
        served_models=models,
        running_models=running,
    )


def tags_of(view: TagsView) -> dict[str, Any]:
    return {entry["name"]: entry for entry in json.loads(view.body())["models"]}


def test_a_model_on_two_nodes_is_listed_once_with_the_details_a_node_reports() -> None:
    index = FleetIndex()
    # gpu-a serves llama without details (an older worker), gpu-b with them
    index.take(
        record(
            "gpu-a", (LLAMA.model_copy(update={"digest": None, "capabilities": ("completion",)}),)
        ),
        0.0,
    )
    index.take(record("gpu-b", (LLAMA.model_copy(update={"capabilities": ("vision",)}), BARE)), 0.0)
    tags = tags_of(TagsView(index))
    assert sorted(tags) == ["llama3.2:3b", "tiny"]
    llama = tags["llama3.2:3b"]
    assert llama["model"] == "llama3.2:3b"
    assert llama["digest"] == "a80c4f17"
    assert llama["size"] == 2_019_393_189
    assert llama["modified_at"] == LLAMA.modified_at
    assert llama["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "3.2B",
        "quantization_level": "Q4_K_M",
    }
    assert llama["capabilities"] == ["completion", "vision"]
    view = TagsView(index)
    assert view.describer("llama3.2:3b") == "gpu-b"  # the node whose details are shown
    assert view.describer("tiny") == "gpu-b"
    assert view.describer("absent") is None


def test_facts_no_node_reports_are_what_ollama_marshals_for_unset_ones() -> None:
    index = FleetIndex()
    index.take(record("gpu-a", (BARE,)), 0.0)
    tiny = tags_of(TagsView(index))["tiny"]
    assert (tiny["digest"], tiny["size"], tiny["modified_at"]) == ("", 0, ZERO_TIME)
    assert tiny["details"]["context_length"] == 512
    assert tiny["details"]["families"] is None


def test_tags_are_rebuilt_on_membership_changes_only() -> None:
    index = FleetIndex()
    view = TagsView(index)
    index.take(record("gpu-a", (LLAMA,)), 0.0)
    first = view.body()
    index.take(record("gpu-a", (LLAMA,), seq=2), 1.0)  # a heartbeat: same body object
    assert view.body() is first
    index.take(record("gpu-b", (BARE,)), 1.0)
    assert "tiny" in tags_of(view)


def test_ps_lists_each_loaded_model_with_the_node_that_runs_it() -> None:
    index = FleetIndex()
    loaded_a = RunningModel(
        name="llama3.2:3b",
        size_bytes=3_000,
        size_vram=2_500,
        expires_at="2026-01-01T00:05:00Z",
        context_length=4096,
    )
    loaded_b = loaded_a.model_copy(update={"expires_at": "2026-01-01T00:09:00Z"})
    index.take(record("gpu-a", (LLAMA,), (loaded_a,)), 0.0)
    index.take(
        record("gpu-b", (LLAMA, BARE.model_copy(update={"running": False})), (loaded_b,)), 0.0
    )
    index.take(record("gpu-c", (BARE,)), 0.0)  # llama.cpp: loaded, no expiry or vram reported
    entries = json.loads(RunningView(index).body())["models"]
    assert [(e["name"], e["node"]) for e in entries] == [
        ("tiny", "gpu-c"),  # longest time left first, as Ollama orders it: kept loaded
        ("llama3.2:3b", "gpu-b"),
        ("llama3.2:3b", "gpu-a"),
    ]
    assert entries[2]["size_vram"] == 2_500
    assert entries[2]["context_length"] == 4096
    assert entries[2]["digest"] == "a80c4f17"
    # llama.cpp keeps its model loaded until it stops: Ollama's "forever", not expired
    assert entries[0]["expires_at"] == KEPT_LOADED
    assert entries[0]["context_length"] == 512


def test_ps_follows_loaded_models_and_stale_nodes() -> None:
    index = FleetIndex()
    view = RunningView(index)
    index.take(record("gpu-a", (LLAMA,), (RunningModel(name=LLAMA.name, expires_at="t1"),)), 0.0)
    assert json.loads(view.body())["models"][0]["expires_at"] == "t1"
    # only the expiry moved: the index's membership stays, the view follows anyway
    index.take(record("gpu-a", (LLAMA,), (RunningModel(name=LLAMA.name, expires_at="t2"),), 2), 1.0)
    assert json.loads(view.body())["models"][0]["expires_at"] == "t2"
    index.sweep(100.0)  # past the ttl: the node is no longer fresh
    assert json.loads(view.body())["models"] == []
