"""Table tests: selection leaves out models that cannot do what a job needs (capabilities)
and workers too old to understand a field it uses (wire features), before load."""

from __future__ import annotations

import random
from typing import Any

import pytest

from router.fleet.index import FleetIndex
from router.selection.needs import JobNeeds, job_needs, what_is_missing, wire_features_of
from router.selection.profiles import SelectionConfig
from router.selection.select import select
from services.capabilities import Capabilities, Load, ModelType, ServedModel
from services.needs import WIRE_FEATURES
from services.wire import JobRequest, JobType

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
CHAT = [{"role": "user", "content": "hi"}]


def record(
    node: str,
    model: str,
    capabilities: tuple[str, ...],
    *,
    model_type: ModelType = "llm",
    features: tuple[str, ...] = WIRE_FEATURES,
    runtime: str = "ollama",
) -> Capabilities:
    return Capabilities(
        node_id=node,
        version="t",
        seq=1,
        ts=0.0,
        ttl_s=60.0,
        served_models=(
            ServedModel(name=model, type=model_type, runtime=runtime, capabilities=capabilities),
        ),
        load={"llm": Load(inflight=0, capacity=4), "embed": Load(inflight=0, capacity=4)},
        wire_features=features,
    )


def index_of(*records: Capabilities) -> FleetIndex:
    index = FleetIndex()
    for one in records:
        index.take(one, 0.0)
    return index


def pick(
    index: FleetIndex,
    job: dict[str, Any],
    job_type: JobType = "llm",
    rng: random.Random | None = None,
) -> str | None:
    request = JobRequest.model_validate(job)
    chosen = select(
        SelectionConfig(),
        index,
        request_model=request.model,
        job_type=job_type,
        now=1.0,
        needs=job_needs(request, job_type),
        rng=rng or random.Random(7),
    )
    return chosen.node if chosen is not None and chosen.source == "fleet" else None


TOOLS_JOB = {"model": "m", "messages": CHAT, "tools": [TOOL]}
JSON_JOB = {"model": "m", "messages": CHAT, "response_format": {"type": "json_object"}}
IMAGE_JOB = {"model": "m", "messages": CHAT, "images": ["aGVsbG8="]}


@pytest.mark.parametrize(
    ("job", "job_type", "capabilities", "features", "model_type", "picked"),
    [
        (TOOLS_JOB, "llm", ("completion", "tools"), WIRE_FEATURES, "llm", True),
        (TOOLS_JOB, "llm", ("completion",), WIRE_FEATURES, "llm", False),
        (TOOLS_JOB, "llm", (), WIRE_FEATURES, "llm", True),  # unknown: the worker decides
        (TOOLS_JOB, "llm", ("completion", "tools"), (), "llm", False),  # an older worker
        ({**TOOLS_JOB, "tool_choice": "none"}, "llm", ("completion",), WIRE_FEATURES, "llm", True),
        ({"model": "m", "messages": CHAT}, "llm", ("completion",), (), "llm", True),
        (JSON_JOB, "llm", ("completion",), ("tools",), "llm", False),
        (JSON_JOB, "llm", ("completion",), WIRE_FEATURES, "llm", True),
        (IMAGE_JOB, "vision", ("completion",), WIRE_FEATURES, "vision", False),
        (IMAGE_JOB, "vision", ("completion", "vision"), WIRE_FEATURES, "vision", True),
        ({"model": "m", "input": "x"}, "embed", ("embedding",), WIRE_FEATURES, "embed", True),
        ({"model": "m", "input": "x"}, "embed", ("completion",), WIRE_FEATURES, "embed", False),
        ({"model": "m", "input": "x"}, "embed", ("embedding",), ("tools",), "embed", False),
        ({"model": "m", "messages": CHAT}, "llm", ("embedding",), WIRE_FEATURES, "llm", False),
    ],
)
def test_capability_and_wire_feature_filter(
    job: dict[str, Any],
    job_type: JobType,
    capabilities: tuple[str, ...],
    features: tuple[str, ...],
    model_type: ModelType,
    picked: bool,
) -> None:
    index = index_of(record("n1", "m", capabilities, model_type=model_type, features=features))
    assert (pick(index, job, job_type) == "n1") is picked


def test_only_the_capable_node_of_a_shared_model_is_picked() -> None:
    index = index_of(
        record("plain-1", "m", ("completion",)),
        record("tools", "m", ("completion", "tools")),
        record("plain-2", "m", ("completion",)),
        record("old", "m", ("completion", "tools"), features=()),
    )
    rng = random.Random(3)
    assert {pick(index, TOOLS_JOB, rng=rng) for _ in range(30)} == {"tools"}
    plain = {pick(index, {"model": "m", "messages": CHAT}, rng=rng) for _ in range(60)}
    assert plain == {"plain-1", "tools", "plain-2", "old"}  # plain chat: every node


TEMPLATE_JOB = {"model": "m", "messages": CHAT, "extra": {"template": "{{ .Prompt }}"}}


def test_a_template_of_its_own_goes_only_to_a_copy_that_ollama_serves() -> None:
    index = index_of(
        record("vllm", "m", ("completion",), runtime="vllm"),
        record("ollama", "m", ("completion",)),
        record("llamacpp", "m", ("completion",), runtime="llamacpp"),
        record("old-ollama", "m", ("completion",), features=("extra",)),
    )
    rng = random.Random(5)
    assert {pick(index, TEMPLATE_JOB, rng=rng) for _ in range(30)} == {"ollama"}
    only_others = index_of(record("vllm", "m", ("completion",), runtime="vllm"))
    assert pick(only_others, TEMPLATE_JOB) is None
    request = JobRequest.model_validate(TEMPLATE_JOB)
    group = only_others.group("m", "llm")
    assert group is not None
    missing = what_is_missing(only_others, group, "vllm", job_needs(request, "llm"))
    assert missing is not None
    assert (missing.field, missing.by_model) == ("template", True)
    assert "served by vllm" in missing.reason
    # an empty template is no template: every node
    plain = JobRequest.model_validate({**TEMPLATE_JOB, "extra": {"template": ""}})
    assert job_needs(plain, "llm").runtimes is None


@pytest.mark.parametrize(
    ("job", "job_type", "features"),
    [
        ({"messages": CHAT}, "llm", ()),
        ({"messages": CHAT, "tools": [TOOL]}, "llm", ("tools",)),
        (
            {"messages": [*CHAT, {"role": "tool", "tool_call_id": "c1", "content": "{}"}]},
            "llm",
            ("tools",),
        ),
        ({"messages": CHAT, "response_format": {"type": "text"}}, "llm", ()),
        ({"messages": CHAT, "logprobs": True, "top_logprobs": 2}, "llm", ("logprobs",)),
        ({"messages": CHAT, "presence_penalty": 0.5}, "llm", ("penalties",)),
        ({"messages": CHAT, "extra": {"top_k": 4}}, "llm", ("extra",)),
        ({"input": ["a"]}, "embed", ("embed",)),
        ({"prompt": "a", "raw": True}, "llm", ("raw",)),
        ({"messages": CHAT, "extra": {"template": "{{ .Prompt }}"}}, "llm", ("extra", "template")),
        ({"messages": CHAT, "max_completion_tokens": 3, "user": "u"}, "llm", ()),
    ],
)
def test_the_wire_features_a_job_uses(
    job: dict[str, Any], job_type: JobType, features: tuple[str, ...]
) -> None:
    assert wire_features_of(JobRequest.model_validate(job), job_type) == features
    assert set(features) <= set(WIRE_FEATURES)


def test_no_needs_is_falsy_and_filters_nothing() -> None:
    assert not JobNeeds()
    index = index_of(record("n1", "m", ("completion",), features=()))
    chosen = select(SelectionConfig(), index, request_model="m", now=1.0)
    assert chosen is not None
    assert chosen.node == "n1"
