"""Selection as tables: profile resolution, requirements, the pick, every fallback."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from router.fleet.candidates import Candidate
from router.selection.profiles import HardDefault, LlmProfile, SelectionConfig
from router.selection.select import Requirements, Selection, requirements, resolve_profile, select
from services.capabilities import ModelType

CONFIG = SelectionConfig.model_validate(
    {
        "llm_profiles": {
            "coder": {"model": "qwen2.5-coder:14b"},
            "vision": {"model": "qwen2.5vl:7b"},
            "chat": {"model": "llama3.1:8b"},
            "fast": {"model": "phi3:mini"},
            "strict": {"model": "mistral:7b"},
            "anything": {"model": "llama3.1:8b"},
            "pinned": {"model": "mixtral:8x7b", "base_url": "http://gpu-box:11434"},
            "gpt": {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "base_url": "https://api.openai.com/v1",
                "api_key_env": "OPENAI_API_KEY",
            },
        },
        "selection_policies": {
            "fast": {"prefer": ["phi3", "llama3", "*"], "constraints": {"max_tokens": 512}},
            "strict": {"prefer": ["mistral"], "fallback_profile": "chat"},
            "anything": {"prefer": ["*", "phi3"]},
        },
        "agents": {
            "helper": {"default_llm": "coder", "fallback_llm": "chat"},
            "cloudy": {"default_llm": "gpt", "fallback_llm": "chat"},
            "plain": {},
        },
        "default_profile": "chat",
    }
)
BARE = SelectionConfig(hard_default=HardDefault())  # no profiles, a hard default
NO_ROUTE = SelectionConfig(hard_default=None)


def cand(
    name: str,
    node: str,
    *,
    type: ModelType = "llm",
    local: bool = False,
    running: bool | None = None,
    size: float | None = None,
    inflight: int = 0,
    capacity: int = 1,
    age: float = 1.5,
) -> Candidate:
    return Candidate(
        name=name,
        type=type,
        node=node,
        local=local,
        node_age_s=age,
        runtime="ollama",
        running=running,
        size_gb=size,
        inflight=inflight,
        capacity=capacity,
    )


# ── profile resolution ───────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("config", "agent_id", "request_model", "expected"),
    [
        pytest.param(CONFIG, None, "coder", "coder", id="request-names-profile"),
        pytest.param(CONFIG, None, "qwen2.5-coder:14b", "coder", id="request-names-model"),
        pytest.param(CONFIG, "helper", "unknown:1b", "coder", id="unmatched-agent-default"),
        pytest.param(CONFIG, "helper", None, "coder", id="agent-default"),
        pytest.param(CONFIG, "cloudy", "chat", "chat", id="request-beats-agent"),
        pytest.param(CONFIG, "plain", None, "chat", id="agent-without-default"),
        pytest.param(CONFIG, "stranger", None, "chat", id="unknown-agent-global"),
        pytest.param(CONFIG, None, None, "chat", id="global-default"),
        pytest.param(BARE, "helper", "llama3:8b", None, id="nothing-configured"),
    ],
)
def test_profile_resolves_by_request_then_agent_then_global(
    config: SelectionConfig, agent_id: str | None, request_model: str | None, expected: str | None
) -> None:
    assert resolve_profile(config, agent_id=agent_id, request_model=request_model) == expected


def test_request_matching_a_profile_name_beats_another_profiles_model() -> None:
    config = SelectionConfig.model_validate(
        {"llm_profiles": {"a": {"model": "b"}, "b": {"model": "x"}}}
    )
    assert resolve_profile(config, agent_id=None, request_model="b") == "b"


# ── requirements ─────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("profile", "agent_id", "request_model", "expected"),
    [
        pytest.param(
            "fast",
            "helper",
            None,
            Requirements(
                "fast", "llm", ("phi3", "llama3", "*"), "ollama", "chat", {"max_tokens": 512}
            ),
            id="policy-agent-fallback",
        ),
        pytest.param(
            "strict",
            "cloudy",
            None,
            Requirements("strict", "llm", ("mistral",), "ollama", "chat"),
            id="policy-own-fallback",
        ),
        pytest.param(
            "gpt",
            "cloudy",
            None,
            Requirements("gpt", "cloud_llm", (), "openai", "chat"),
            id="cloud-provider",
        ),
        pytest.param(
            "coder",
            None,
            None,
            Requirements("coder", "code", ("qwen2.5-coder:14b",), "ollama", None),
            id="name-coder",
        ),
        pytest.param(
            "vision",
            None,
            None,
            Requirements("vision", "vision", ("qwen2.5vl:7b",), "ollama", None),
            id="name-vision",
        ),
        pytest.param(
            "chat",
            None,
            None,
            Requirements("chat", "llm", ("llama3.1:8b",), "ollama", None),
            id="name-llm",
        ),
        pytest.param(
            None,
            "helper",
            "llava:13b",
            Requirements(None, "vision", ("llava:13b",), None, "chat"),
            id="no-profile-request-model",
        ),
        pytest.param(None, None, None, Requirements(None, "llm", (), None, None), id="nothing"),
    ],
)
def test_requirements_come_from_policy_then_provider_then_names(
    profile: str | None, agent_id: str | None, request_model: str | None, expected: Requirements
) -> None:
    got = requirements(CONFIG, profile, agent_id=agent_id, request_model=request_model)
    assert got == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("llava:13b", "vision"),
        ("qwen2-vl:7b", "vision"),
        ("qwen2.5vl:3b", "vision"),
        ("llama3.2-vision:11b", "vision"),
        ("codellama:7b", "code"),
        ("starcoder2:3b", "code"),
        ("nomic-embed-text", "embed"),
        ("devlin:7b", "llm"),
        ("llama3:8b", "llm"),
    ],
)
def test_type_is_derived_from_the_model_name(model: str, expected: str) -> None:
    got = requirements(BARE, None, agent_id=None, request_model=model)
    assert got.required_type == expected


def test_policy_constraints_are_carried_read_only() -> None:
    got = requirements(CONFIG, "fast", agent_id=None, request_model=None)
    assert got.constraints == {"max_tokens": 512}
    with pytest.raises(TypeError):
        got.constraints["max_tokens"] = 1  # type: ignore[index]


def test_requirements_for_an_unknown_profile_are_refused() -> None:
    with pytest.raises(ValueError, match="ghost"):
        requirements(CONFIG, "ghost", agent_id=None, request_model=None)


# ── the pick ─────────────────────────────────────────────────────────────────


def row(
    id: str,
    kwargs: dict[str, Any],
    candidates: list[Candidate],
    expected: tuple[str, str | None, str],
    reason: str = "",
    config: SelectionConfig = CONFIG,
) -> Any:
    return pytest.param(config, kwargs, candidates, expected, reason, id=id)


PICKS = [
    # stand-ins: code and llm serve each other, vision only vision
    row(
        "code-profile-takes-llm",
        {"agent_id": "helper"},
        [cand("llama3.1:8b", "n1")],
        ("llama3.1:8b", "n1", "fleet"),
        "nothing matches prefer ['qwen2.5-coder:14b']; best code candidate",
    ),
    row(
        "llm-takes-code",
        {"request_model": "anything"},
        [cand("qwen2.5-coder:7b", "n1", type="code")],
        ("qwen2.5-coder:7b", "n1", "fleet"),
    ),
    row(
        "vision-never-takes-llm",
        {"request_model": "vision"},
        [cand("llama3.1:8b", "n1")],
        ("qwen2.5vl:7b", None, "static"),
        "profile 'vision': no vision candidate; using its static config",
    ),
    # exclusion
    row(
        "excluded-nodes-are-skipped",
        {"request_model": "chat", "exclude_nodes": frozenset({"n1"})},
        [cand("llama3.1:8b", "n1"), cand("llama3.1:8b", "n2")],
        ("llama3.1:8b", "n2", "fleet"),
    ),
    row(
        "all-excluded-static",
        {"request_model": "chat", "exclude_nodes": frozenset({"n1"})},
        [cand("llama3.1:8b", "n1")],
        ("llama3.1:8b", None, "static"),
        "profile 'chat': all llm candidates are on excluded nodes; using its static config",
    ),
    # prefer list
    row(
        "prefer-order-wins-over-size",
        {"request_model": "fast"},
        [cand("llama3:70b", "n1", size=40), cand("phi3:mini", "n2", size=2)],
        ("phi3:mini", "n2", "fleet"),
    ),
    row(
        "prefer-local-contained-before-remote-exact",
        {"request_model": "strict"},
        [cand("mistral", "n2"), cand("mistral-nemo:12b", "n1", local=True)],
        ("mistral-nemo:12b", "n1", "fleet"),
    ),
    row(
        "prefer-exact-before-contained",
        {"request_model": "strict"},
        [cand("mistral-nemo:12b", "n1", size=7), cand("mistral", "n2", size=4)],
        ("mistral", "n2", "fleet"),
    ),
    row(
        "prefer-contained-running-larger",
        {"request_model": "fast"},
        [
            cand("phi3:mini", "n1", running=False, size=2),
            cand("phi3:medium", "n2", running=True, size=8),
        ],
        ("phi3:medium", "n2", "fleet"),
    ),
    row(
        "star-ends-prefer-list",
        {"request_model": "anything"},
        [cand("phi3:mini", "n1", size=2), cand("qwen2.5:32b", "n2", size=20)],
        ("qwen2.5:32b", "n2", "fleet"),
    ),
    row(
        "star-reached-after-misses",
        {"request_model": "fast"},
        [cand("qwen2.5:32b", "n2", size=20), cand("gemma2:2b", "n1", size=2)],
        ("qwen2.5:32b", "n2", "fleet"),
    ),
    row(
        "prefer-miss-falls-to-best-with-reason",
        {"request_model": "strict"},
        [cand("qwen2.5:32b", "n2", size=20)],
        ("qwen2.5:32b", "n2", "fleet"),
        "nothing matches prefer ['mistral']; best llm candidate",
    ),
    # best candidate ordering
    row(
        "best-running-before-larger",
        {"request_model": "anything"},
        [cand("big:70b", "n1", size=40), cand("small:3b", "n2", running=True, size=2)],
        ("small:3b", "n2", "fleet"),
    ),
    row(
        "best-larger-first",
        {"request_model": "anything"},
        [cand("small:3b", "n1", size=2), cand("big:70b", "n2", size=40)],
        ("big:70b", "n2", "fleet"),
    ),
    row(
        "best-local-before-remote",
        {"request_model": "anything"},
        [cand("m:7b", "n1", size=4), cand("m:7b", "n2", size=4, local=True)],
        ("m:7b", "n2", "fleet"),
    ),
    # force_local
    row(
        "force-local-skips-remote",
        {"request_model": "chat", "force_local": True},
        [cand("llama3.1:8b", "n2", size=5), cand("phi3:mini", "n1", local=True)],
        ("phi3:mini", "n1", "fleet"),
        "nothing matches prefer ['llama3.1:8b']; best llm candidate",
    ),
    row(
        "force-local-without-local-static",
        {"request_model": "chat", "force_local": True},
        [cand("llama3.1:8b", "n2")],
        ("llama3.1:8b", None, "static"),
        "profile 'chat': no local llm candidate (force_local); using its static config",
    ),
    # load: least loaded among equals, saturated skipped while an unsaturated one exists
    row(
        "same-model-least-loaded",
        {"request_model": "chat"},
        [
            cand("llama3.1:8b", "n1", inflight=3, capacity=4),
            cand("llama3.1:8b", "n2", inflight=1, capacity=4),
            cand("llama3.1:8b", "n3", inflight=2, capacity=4),
        ],
        ("llama3.1:8b", "n2", "fleet"),
    ),
    row(
        "saturated-local-yields-to-remote",
        {"request_model": "chat"},
        [
            cand("llama3.1:8b", "n1", local=True, inflight=2, capacity=2),
            cand("llama3.1:8b", "n2", inflight=3, capacity=4),
        ],
        ("llama3.1:8b", "n2", "fleet"),
    ),
    row(
        "unsaturated-local-beats-idle-remote",
        {"request_model": "chat"},
        [
            cand("llama3.1:8b", "n1", local=True, inflight=1, capacity=2),
            cand("llama3.1:8b", "n2"),
        ],
        ("llama3.1:8b", "n1", "fleet"),
    ),
    row(
        "all-saturated-least-loaded",
        {"request_model": "chat"},
        [
            cand("llama3.1:8b", "n1", inflight=5, capacity=2),
            cand("llama3.1:8b", "n2", inflight=3, capacity=2),
        ],
        ("llama3.1:8b", "n2", "fleet"),
    ),
    row(
        "best-saturation-skips-node-not-model",
        {"request_model": "anything"},
        [
            cand("big:70b", "n1", size=40, inflight=1),
            cand("big:70b", "n2", size=40),
            cand("small:3b", "n3", size=2),
        ],
        ("big:70b", "n2", "fleet"),
    ),
    row(
        "lone-saturated-model-still-best",
        {"request_model": "anything"},
        [cand("big:70b", "n1", size=40, inflight=1), cand("small:3b", "n3", size=2)],
        ("big:70b", "n1", "fleet"),
    ),
    row(
        "equal-rank-different-models-least-loaded",
        {"request_model": "anything"},
        [
            cand("a:7b", "n1", size=4, inflight=1, capacity=2),
            cand("b:7b", "n2", size=4, inflight=0, capacity=2),
        ],
        ("b:7b", "n2", "fleet"),
    ),
    # static fallbacks
    row(
        "static-with-base-url",
        {"request_model": "pinned"},
        [],
        ("mixtral:8x7b", None, "static"),
        "profile 'pinned': no llm candidate; using its static config",
    ),
    row(
        "cloud-profile-is-static-without-fleet",
        {"agent_id": "cloudy"},
        [cand("gpt-4o-mini", "n1")],
        ("gpt-4o-mini", None, "static"),
    ),
    # bare request models (no profile)
    row(
        "bare-model-exact",
        {"request_model": "llama3:8b"},
        [cand("llama3:8b", "n1"), cand("qwen2.5:72b", "n2", size=40)],
        ("llama3:8b", "n1", "fleet"),
        config=BARE,
    ),
    row(
        "bare-model-contained",
        {"request_model": "llama3"},
        [cand("llama3:8b", "n1")],
        ("llama3:8b", "n1", "fleet"),
        config=BARE,
    ),
    row(
        "bare-model-missing-never-best",
        {"request_model": "llama3:8b"},
        [cand("qwen2.5:72b", "n2", size=40)],
        ("llama3.2:3b", None, "hard_default"),
        "model 'llama3:8b': no eligible node serves it; using the hard default",
        config=BARE,
    ),
    row(
        "bare-model-only-excluded",
        {"request_model": "llama3:8b", "exclude_nodes": frozenset({"n1"})},
        [cand("llama3:8b", "n1")],
        ("llama3.2:3b", None, "hard_default"),
        "model 'llama3:8b': all llm candidates are on excluded nodes; using the hard default",
        config=BARE,
    ),
    row(
        "no-request-no-profile-best",
        {},
        [cand("small:3b", "n1", size=2), cand("big:8b", "n2", size=5)],
        ("big:8b", "n2", "fleet"),
        config=BARE,
    ),
    # a request model that names no profile, with an agent default
    row(
        "unprofiled-request-model-served-wins",
        {"agent_id": "helper", "request_model": "gemma2:9b"},
        [cand("gemma2:9b", "n2"), cand("qwen2.5-coder:14b", "n1", type="code")],
        ("gemma2:9b", "n2", "fleet"),
    ),
    row(
        "unprofiled-request-model-missing-agent-default",
        {"agent_id": "helper", "request_model": "gemma2:9b"},
        [cand("qwen2.5-coder:14b", "n1", type="code")],
        ("qwen2.5-coder:14b", "n1", "fleet"),
        "model 'gemma2:9b': no eligible node serves it; using profile 'coder'",
    ),
]


@pytest.mark.parametrize(("config", "kwargs", "candidates", "expected", "reason"), PICKS)
def test_selection_picks(
    config: SelectionConfig,
    kwargs: dict[str, Any],
    candidates: list[Candidate],
    expected: tuple[str, str | None, str],
    reason: str,
) -> None:
    got = select(config, candidates, **kwargs)
    assert got is not None
    assert (got.model, got.node, got.source) == expected
    assert got.fallback_reason == reason


def test_fleet_pick_carries_node_runtime_and_caps_age() -> None:
    got = select(CONFIG, [cand("llama3.1:8b", "n7", age=4.25)], request_model="chat")
    assert got == Selection(
        model="llama3.1:8b",
        type="llm",
        source="fleet",
        node="n7",
        local=False,
        runtime="ollama",
        profile="chat",
        caps_age_s=4.25,
    )
    assert got.remote


def test_local_fleet_pick_and_static_are_not_remote() -> None:
    local = select(CONFIG, [cand("llama3.1:8b", "n1", local=True)], request_model="chat")
    static = select(CONFIG, [], request_model="chat")
    assert local is not None
    assert static is not None
    assert not local.remote
    assert not static.remote


def test_cloud_profile_selects_its_provider_endpoint_and_key() -> None:
    got = select(CONFIG, [], agent_id="cloudy")
    assert got == Selection(
        model="gpt-4o-mini",
        type="cloud_llm",
        source="static",
        provider="openai",
        base_url="https://api.openai.com/v1",
        api_key_env="OPENAI_API_KEY",
        profile="gpt",
    )


# ── fallback profiles, cycles, hard default, no route ───────────────────────


def test_force_local_cloud_profile_falls_back_to_the_agents_local_profile() -> None:
    got = select(
        CONFIG, [cand("llama3.1:8b", "n1", local=True)], agent_id="cloudy", force_local=True
    )
    assert got is not None
    assert (got.model, got.node, got.profile) == ("llama3.1:8b", "n1", "chat")
    assert got.fallback_reason == (
        "profile 'gpt': cloud profile skipped under force_local; fallback profile 'chat'"
    )


@pytest.mark.parametrize(
    ("asked", "fleet", "static_tried", "expected"),
    [
        # The static config comes before the fallback profile, the fleet's included...
        ({"agent_id": "cloudy"}, [cand("llama3.1:8b", "n2")], False, ("gpt-4o-mini", None, "gpt")),
        (
            {"request_model": "pinned", "agent_id": "helper"},
            [],
            False,
            ("mixtral:8x7b", None, "pinned"),
        ),
        # ...and once it failed, the fallback profile is served by any fleet node,
        ({"agent_id": "cloudy"}, [cand("llama3.1:8b", "n2")], True, ("llama3.1:8b", "n2", "chat")),
        # while the fallback profile's own static config stays usable.
        ({"agent_id": "cloudy"}, [], True, ("llama3.1:8b", None, "chat")),
        (
            {"request_model": "pinned", "agent_id": "helper"},
            [],
            True,
            ("llama3.1:8b", None, "chat"),
        ),
    ],
    ids=["cloud-static", "pinned-static", "cloud-failed", "fallback-static", "pinned-failed"],
)
def test_a_failed_static_config_goes_on_to_the_fallback_profile_on_the_fleet(
    asked: dict[str, str],
    fleet: list[Candidate],
    static_tried: bool,
    expected: tuple[str, str | None, str],
) -> None:
    agent, model = asked.get("agent_id"), asked.get("request_model")
    got = select(CONFIG, fleet, agent_id=agent, request_model=model, static_tried=static_tried)
    assert got is not None
    assert (got.model, got.node, got.profile) == expected
    if static_tried:
        assert "its static config failed; fallback profile 'chat'" in got.fallback_reason


CYCLE = SelectionConfig.model_validate(
    {
        "llm_profiles": {
            "a": {"provider": "openai", "model": "gpt-4o"},
            "b": {"provider": "anthropic", "model": "claude-3-5-haiku"},
        },
        "selection_policies": {
            "a": {"required_type": "cloud_llm", "fallback_profile": "b"},
            "b": {"required_type": "cloud_llm", "fallback_profile": "a"},
        },
        "default_profile": "a",
        "hard_default": {"provider": "ollama", "model": "llama3.2:3b"},
    }
)


def test_fallback_cycle_ends_at_the_hard_default() -> None:
    got = select(CYCLE, [cand("llama3:8b", "n1")], force_local=True)
    assert got is not None
    assert (got.model, got.source, got.provider) == ("llama3.2:3b", "hard_default", "ollama")
    assert got.fallback_reason == (
        "profile 'a': cloud profile skipped under force_local; fallback profile 'b'; "
        "profile 'b': cloud profile skipped under force_local; "
        "fallback profile 'a' already tried; using the hard default"
    )


def test_unserved_bare_model_falls_back_to_the_agents_cloud_profile() -> None:
    config = SelectionConfig.model_validate(
        {
            "llm_profiles": {"gpt": {"provider": "openai", "model": "gpt-4o"}},
            "agents": {"x": {"fallback_llm": "gpt"}},
        }
    )
    got = select(config, [], agent_id="x", request_model="phi3:mini")
    assert got is not None
    assert (got.source, got.profile, got.type) == ("static", "gpt", "cloud_llm")
    assert got.fallback_reason == ("model 'phi3:mini': no llm candidate; fallback profile 'gpt'")


FLEET_FIRST = SelectionConfig.model_validate(
    {
        "llm_profiles": {
            "gpt": {"provider": "openai", "model": "gpt-4o"},
            "small": {"model": "phi3:mini"},
        },
        "selection_policies": {"gpt": {"prefer": ["llama3"], "fallback_profile": "small"}},
    }
)


@pytest.mark.parametrize(
    ("candidates", "force_local", "expected", "reason"),
    [
        ([cand("llama3:8b", "n2")], False, ("llama3:8b", "fleet", "gpt"), ""),
        (
            [],
            False,
            ("gpt-4o", "static", "gpt"),
            "profile 'gpt': no llm candidate; using its static config",
        ),
        (
            [cand("llama3:8b", "n2")],
            True,
            ("phi3:mini", "static", "small"),
            "profile 'gpt': no local llm candidate (force_local); its static config is cloud, "
            "skipped under force_local; fallback profile 'small'; profile 'small': no local llm "
            "candidate (force_local); using its static config",
        ),
    ],
)
def test_cloud_profile_with_an_llm_policy_tries_the_fleet_first(
    candidates: list[Candidate], force_local: bool, expected: tuple[str, str, str], reason: str
) -> None:
    got = select(FLEET_FIRST, candidates, request_model="gpt", force_local=force_local)
    assert got is not None
    assert (got.model, got.source, got.profile) == expected
    assert got.fallback_reason == reason


def test_cycle_without_hard_default_is_no_route() -> None:
    config = CYCLE.model_copy(update={"hard_default": None})
    assert select(config, [], force_local=True) is None


def test_unserved_model_without_hard_default_is_no_route() -> None:
    assert select(NO_ROUTE, [cand("qwen2.5:7b", "n1")], request_model="llama3:8b") is None


def test_configured_hard_default_is_used_as_written() -> None:
    config = SelectionConfig(hard_default=HardDefault(model="phi3:mini", base_url="http://h:1"))
    got = select(config, [], request_model="missing:1b")
    assert got is not None
    assert (got.model, got.base_url, got.source) == ("phi3:mini", "http://h:1", "hard_default")


# ── configuration ────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"default_profile": "ghost"}, "default_profile"),
        ({"selection_policies": {"ghost": {}}}, "selection_policies.ghost"),
        (
            {"selection_policies": {"p": {"fallback_profile": "ghost"}}},
            "selection_policies.p.fallback_profile",
        ),
        ({"agents": {"x": {"default_llm": "ghost"}}}, "agents.x.default_llm"),
        ({"agents": {"x": {"fallback_llm": "ghost"}}}, "agents.x.fallback_llm"),
        (
            {"selection_policies": {"p": {"required_type": "cloud_llm"}}},
            "selection_policies.p.required_type",
        ),
        ({"selection_policies": {"p": {"required_type": "audio"}}}, "required_type"),
        ({"llm_profiles": {"q": {"modle": "x"}}}, "modle"),
        ({"llm_profiles": {"q": {"model": ""}}}, "model"),
        ({"agents": {"x": {"default": "p"}}}, "default"),
        ({"hard_default": {"model": "x", "port": 1}}, "port"),
    ],
)
def test_bad_config_fails_naming_the_field(data: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"llm_profiles": {"p": {"model": "llama3:8b"}}}
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        SelectionConfig.model_validate(base | data)


def test_config_defaults_and_frozenness() -> None:
    config = SelectionConfig()
    assert config.hard_default is None  # opt-in: a named model is never silently swapped
    assert HardDefault() == HardDefault(provider="ollama", model="llama3.2:3b")
    assert {"openai", "anthropic", "groq", "together"} <= config.cloud_providers
    with pytest.raises(ValidationError):
        config.default_profile = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        LlmProfile(model="x").model = "y"  # type: ignore[misc]


def test_a_job_with_images_asks_for_a_vision_model_whatever_the_names_say() -> None:
    candidates = [cand("llama3:8b", "n1"), cand("llava:7b", "n1", type="vision")]
    got = select(BARE, candidates, job_type="vision")
    assert got is not None
    assert (got.model, got.type) == ("llava:7b", "vision")


def test_best_candidate_takes_the_wanted_type_before_a_bigger_stand_in() -> None:
    candidates = [
        cand("qwen2.5-coder:7b", "n1", type="code", size=4.7, running=True),
        cand("llama3.2:3b", "n1", size=2.0, running=True),
    ]
    got = select(BARE, candidates)
    assert got is not None
    assert got.model == "llama3.2:3b"
    coder = select(BARE, candidates, job_type="code")
    assert coder is not None
    assert coder.model == "qwen2.5-coder:7b"
    only_code = select(BARE, candidates[:1])
    assert only_code is not None
    assert only_code.model == "qwen2.5-coder:7b"  # a stand-in when nothing else serves
