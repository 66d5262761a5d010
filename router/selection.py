"""Model selection: which model on which node serves a request, or else which static endpoint.

Pure over `SelectionConfig` and the fleet's `Candidate`s (no I/O, no clock: a candidate
carries its `node_age_s`), so every branch is a row in a table test. Order (DESIGN §6):

0. A request model that names no profile is looked for on the fleet first, even when an
   agent or global default resolves a profile: a caller naming a model wants that model,
   and `/v1/models` lists the fleet's models. If no eligible node serves it, the resolved
   profile takes over and `fallback_reason` says so.
1. Profile → `Requirements`; a `cloud_llm` profile is its static config unless `force_local`.
2. Candidates of the wanted type (llm and code stand in for each other), off `exclude_nodes`
   (breaker-open, already failed), only local ones under `force_local`.
3. The prefer list in order: contained (or exact) name; within an entry local first, then
   exact before contained, then running, then larger. `"*"` ends the list.
4. Else the best candidate: running first, larger first, local first.
5. Nothing → the profile's static config → its fallback profile (the whole pipeline again,
   each profile once) → the hard default → `None`.

Decisions:
- A profile's prefer list that matches nothing falls to the best candidate of its type (as
  the seed and DESIGN do): a profile is a role, and a served model of that type fills it
  better than a static endpoint the fleet does not confirm. `fallback_reason` names the
  missed list; after `"*"` the best candidate is intended and the reason stays empty. A
  bare request model (no profile) never falls to the best candidate: it is a name.
- Load: saturated nodes are skipped while another node serves the *same model* unsaturated
  (they would answer BUSY); a lone saturated model still beats a worse model. Then the
  step's order, the least `load_ratio`, node id, name.
- A named profile's static config is always usable except a cloud one under `force_local`;
  fallback profiles thus serve force-local retries of cloud profiles and bare request
  models. Names also map "embed" to the embed type.
- `node`/`local`/`runtime`/`caps_age_s` describe fleet picks; static and hard-default picks
  carry `provider`/`base_url`/`api_key_env` (no `base_url` on a local provider: the router
  node's own runtime). `"direct"` is for callers that bypass selection; never returned here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from router.candidates import Candidate
from router.profiles import AgentConfig, SelectionConfig

__all__ = ["Requirements", "Selection", "requirements", "resolve_profile", "select"]

# Candidate types that may serve each required type: llm and code stand in for each other.
_STAND_INS: Mapping[str, tuple[str, ...]] = {
    "llm": ("llm", "code"), "code": ("code", "llm"), "vision": ("vision",), "embed": ("embed",),
    "cloud_llm": (),
}  # fmt: skip
_VISION = re.compile(r"vision|llava|(?:^|[^a-z])vl(?:$|[^a-z])")
_NO_AGENT = AgentConfig()


@dataclass(frozen=True)
class Requirements:
    """What the fleet must offer for one profile (or for a bare request model)."""

    profile: str | None
    required_type: str
    prefer: tuple[str, ...]
    provider: str | None
    fallback_profile: str | None
    constraints: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Selection:
    model: str
    type: str
    source: Literal["fleet", "static", "hard_default", "direct"]
    node: str | None = None
    local: bool = False
    runtime: str | None = None
    provider: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    profile: str | None = None
    fallback_reason: str = ""  # empty for a normal pick; explains every fallback
    caps_age_s: float | None = None

    @property
    def remote(self) -> bool:
        """True when the work goes over the bus to another node."""
        return self.source == "fleet" and not self.local


def resolve_profile(
    config: SelectionConfig, *, agent_id: str | None, request_model: str | None
) -> str | None:
    """The profile a request runs under: by request model, agent default, global default.

    A request model matches a profile by name first, then by the profile's model.
    """
    if request_model:
        if request_model in config.llm_profiles:
            return request_model
        for name, profile in config.llm_profiles.items():
            if profile.model == request_model:
                return name
    agent = _agent(config, agent_id)
    return agent.default_llm or config.default_profile


def requirements(
    config: SelectionConfig,
    profile: str | None,
    *,
    agent_id: str | None,
    request_model: str | None,
    job_type: str | None = None,
) -> Requirements:
    """Requirements from the profile's policy, else its provider, else the names involved.

    The fallback profile is the policy's, else the agent's `fallback_llm`. Where names
    decide the type, the job's own type wins when it says more than "llm" (a job with
    images is a vision job whatever the names say).
    """
    agent_fallback = _agent(config, agent_id).fallback_llm
    stated = job_type if job_type not in (None, "llm") else None
    if profile is None:
        named = (request_model,) if request_model else ()
        required = stated or _type_from_names(*named)
        return Requirements(None, required, named, None, agent_fallback)
    if profile not in config.llm_profiles:
        raise ValueError(f"unknown profile {profile!r}")
    llm = config.llm_profiles[profile]
    policy = config.selection_policies.get(profile)
    if policy is not None:
        return Requirements(
            profile=profile,
            required_type=policy.required_type,
            prefer=tuple(policy.prefer),
            provider=policy.provider or llm.provider,
            fallback_profile=policy.fallback_profile or agent_fallback,
            constraints=MappingProxyType(dict(policy.constraints)),
        )
    if config.is_cloud(llm):
        return Requirements(profile, "cloud_llm", (), llm.provider, agent_fallback)
    required_type = stated or _type_from_names(profile, llm.model)
    return Requirements(profile, required_type, (llm.model,), llm.provider, agent_fallback)


def select(
    config: SelectionConfig,
    candidates: Sequence[Candidate],
    *,
    agent_id: str | None = None,
    request_model: str | None = None,
    exclude_nodes: frozenset[str] = frozenset(),
    force_local: bool = False,
    job_type: str | None = None,
) -> Selection | None:
    """Choose a model for one request; `None` means no route (no hard default configured)."""
    pool = _eligible(candidates, exclude_nodes, force_local)
    profile = resolve_profile(config, agent_id=agent_id, request_model=request_model)
    reasons: list[str] = []
    if request_model and profile is not None and not _names(config, profile, request_model):
        direct = requirements(
            config, None, agent_id=agent_id, request_model=request_model, job_type=job_type
        )
        picked, why = _from_fleet(direct, pool)
        if picked is not None:
            return _fleet_selection(picked, direct, why)
        reasons.append(f"{_label(direct)}: {why}; using profile {profile!r}")
    reqs = requirements(
        config, profile, agent_id=agent_id, request_model=request_model, job_type=job_type
    )
    visited: set[str | None] = set()
    while True:
        visited.add(reqs.profile)
        label = _label(reqs)
        usable_static = reqs.profile is not None and not (
            force_local and config.is_cloud(config.llm_profiles[reqs.profile])
        )
        if reqs.required_type == "cloud_llm":
            if usable_static:
                return _static(config, reqs, _join(reasons))
            reasons.append(f"{label}: cloud profile skipped under force_local")
        else:
            picked, why = _from_fleet(reqs, pool)
            if picked is not None:
                return _fleet_selection(picked, reqs, _join([*reasons, why]))
            reasons.append(f"{label}: {why}")
            if usable_static:
                return _static(config, reqs, _join([*reasons, "using its static config"]))
            if reqs.profile is not None:
                reasons.append("its static config is cloud, skipped under force_local")
        fallback = reqs.fallback_profile
        if fallback is None:
            break
        if fallback in visited:
            reasons.append(f"fallback profile {fallback!r} already tried")
            break
        reasons.append(f"fallback profile {fallback!r}")
        reqs = requirements(
            config, fallback, agent_id=agent_id, request_model=None, job_type=job_type
        )
    hard = config.hard_default
    if hard is None:
        return None
    return Selection(
        model=hard.model,
        type="llm",
        source="hard_default",
        provider=hard.provider,
        base_url=hard.base_url,
        fallback_reason=_join([*reasons, "using the hard default"]),
    )


@dataclass(frozen=True)
class _Pool:
    """Eligible candidates, plus which types exclusion or `force_local` emptied (for reasons)."""

    candidates: Sequence[Candidate]
    excluded_types: frozenset[str]  # types whose every candidate sat on an excluded node
    remote_only_types: frozenset[str]  # types with only remote candidates (force_local)


def _eligible(candidates: Sequence[Candidate], exclude: frozenset[str], local: bool) -> _Pool:
    open_ = [c for c in candidates if c.node not in exclude]
    kept = [c for c in open_ if c.local or not local]
    all_types = {c.type for c in candidates}
    open_types = {c.type for c in open_}
    return _Pool(
        candidates=kept,
        excluded_types=frozenset(all_types - open_types),
        remote_only_types=frozenset(open_types - {c.type for c in kept}),
    )


def _from_fleet(reqs: Requirements, pool: _Pool) -> tuple[Candidate | None, str]:
    """The fleet's pick for `reqs` and the fallback reason, or `None` and why not."""
    wanted = _STAND_INS[reqs.required_type]
    typed = [c for c in pool.candidates if c.type in wanted]
    if not typed:
        return None, _why_no_candidate(reqs.required_type, wanted, pool)
    # Best-candidate picks take the wanted type itself when it exists; a stand-in (code
    # for llm, llm for code) only when it does not. Prefer lists match by name in both.
    best_pool = [c for c in typed if c.type == wanted[0]] or typed
    for pref in reqs.prefer:
        if pref == "*":
            return _pick(best_pool, _best_rank), ""
        matches = [c for c in typed if pref in c.name]
        if matches:
            return _pick(matches, _prefer_rank(pref)), ""
    if reqs.profile is None and reqs.prefer:
        return None, "no eligible node serves it"
    missed = f"nothing matches prefer {list(reqs.prefer)}; " if reqs.prefer else ""
    reason = f"{missed}best {reqs.required_type} candidate" if missed else ""
    return _pick(best_pool, _best_rank), reason


def _why_no_candidate(required_type: str, wanted: tuple[str, ...], pool: _Pool) -> str:
    if any(t in pool.excluded_types for t in wanted):
        return f"all {required_type} candidates are on excluded nodes"
    if any(t in pool.remote_only_types for t in wanted):
        return f"no local {required_type} candidate (force_local)"
    return f"no {required_type} candidate"


_Rank = tuple[bool | float, ...]


def _prefer_rank(pref: str) -> Callable[[Candidate], _Rank]:
    def rank(c: Candidate) -> _Rank:
        return (not c.local, c.name != pref, not c.running, -(c.size_gb or 0.0))

    return rank


def _best_rank(c: Candidate) -> _Rank:
    return (not c.running, -(c.size_gb or 0.0), not c.local)


def _pick(pool: Sequence[Candidate], rank: Callable[[Candidate], _Rank]) -> Candidate:
    """The top candidate by `rank`, skipping saturated nodes of a model served unsaturated."""
    unsaturated_models = {c.name for c in pool if not c.saturated}
    eligible = [c for c in pool if not c.saturated or c.name not in unsaturated_models]
    return min(eligible, key=lambda c: (rank(c), c.load_ratio, c.node, c.name))


def _fleet_selection(c: Candidate, reqs: Requirements, reason: str) -> Selection:
    return Selection(
        model=c.name,
        type=c.type,
        source="fleet",
        node=c.node,
        local=c.local,
        runtime=c.runtime,
        profile=reqs.profile,
        fallback_reason=reason,
        caps_age_s=c.node_age_s,
    )


def _static(config: SelectionConfig, reqs: Requirements, reason: str) -> Selection:
    assert reqs.profile is not None  # callers check; a bare request model has no config
    llm = config.llm_profiles[reqs.profile]
    return Selection(
        model=llm.model,
        type="cloud_llm" if config.is_cloud(llm) else reqs.required_type,
        source="static",
        provider=llm.provider,
        base_url=llm.base_url,
        api_key_env=llm.api_key_env,
        profile=reqs.profile,
        fallback_reason=reason,
    )


def _agent(config: SelectionConfig, agent_id: str | None) -> AgentConfig:
    return config.agents.get(agent_id, _NO_AGENT) if agent_id else _NO_AGENT


def _names(config: SelectionConfig, profile: str, request_model: str) -> bool:
    return request_model in (profile, config.llm_profiles[profile].model)


def _type_from_names(*names: str) -> str:
    lowered = " ".join(names).lower()
    if _VISION.search(lowered):
        return "vision"
    if "code" in lowered:
        return "code"
    if "embed" in lowered:
        return "embed"
    return "llm"


def _label(reqs: Requirements) -> str:
    if reqs.profile is not None:
        return f"profile {reqs.profile!r}"
    return f"model {reqs.prefer[0]!r}" if reqs.prefer else "no profile"


def _join(parts: Sequence[str]) -> str:
    return "; ".join(part for part in parts if part)
