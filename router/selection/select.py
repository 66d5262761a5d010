"""Model selection: which model on which node serves a request, or else which static endpoint.

Pure over `SelectionConfig` and the fleet index (no I/O; `now` and the RNG passed in), so
every branch is a row in a table test; a plain list of `Candidate`s is accepted too (it is
indexed first: tests and tools). Reads only the groups of the wanted types and, through
`picking.py`, a few nodes of the best rank: nothing here is O(fleet). Order (DESIGN §6):

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
  DESIGN says): a profile is a role, and a served model of that type fills it
  better than a static endpoint the fleet does not confirm. `fallback_reason` names the
  missed list; after `"*"` the best candidate is intended and the reason stays empty. A
  bare request model (no profile) never falls to the best candidate: it is a name.
- Load: saturated nodes are skipped while another node serves the *same model* unsaturated
  (they would answer BUSY); a lone saturated model still beats a worse model. Then the
  step's order; among equals the least `load_ratio` (power of two random choices when
  many are equal), ties at random — never by node id, which sent all traffic to one node.
- A bare request model's type is the one the fleet's runtimes report for that name, when
  served (moondream, minicpm-v: vision by capability, whatever the name says); else the
  job's type; else the name's hints.
- A named profile's static config is always usable except a cloud one under `force_local`,
  and except once it has failed (`static_tried`: its fallback profile is next, fleet first);
  fallback profiles thus serve force-local retries of cloud profiles and bare request
  models. Names also map "embed" to the embed type.
- `node`/`local`/`runtime`/`caps_age_s` describe fleet picks; static and hard-default picks
  carry `provider`/`base_url`/`api_key_env` (no `base_url` on a local provider: the router
  node's own runtime).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from router.fleet.candidates import Candidate
from router.fleet.index import BucketKey, FleetIndex, ModelGroup
from router.selection.needs import NO_NEEDS, JobNeeds, fit_check
from router.selection.picking import Picker, Rank
from router.selection.profiles import AgentConfig, SelectionConfig

__all__ = ["Requirements", "Selection", "requirements", "resolve_profile", "select"]

# Candidate types that may serve each required type: llm and code stand in for each other.
_STAND_INS: Mapping[str, tuple[str, ...]] = {
    "llm": ("llm", "code"), "code": ("code", "llm"), "vision": ("vision",), "embed": ("embed",),
    "cloud_llm": (),
}  # fmt: skip
_VISION = re.compile(r"vision|llava|(?:^|[^a-z])vl(?:$|[^a-z])")
_NO_AGENT = AgentConfig()
_RNG = random.Random()


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
    source: Literal["fleet", "static", "hard_default"]
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
    served_type: Callable[[str], str | None] = lambda _name: None,
) -> Requirements:
    """Requirements from the profile's policy, else its provider, else the names involved.

    The fallback profile is the policy's, else the agent's `fallback_llm`. Where names
    decide the type, the job's own type wins when it says more than "llm" (a job with
    images is a vision job whatever the names say), then `served_type(model)`: the type
    the fleet's runtimes give the model.
    """
    agent_fallback = _agent(config, agent_id).fallback_llm
    stated = job_type if job_type not in (None, "llm") else None
    if profile is None:
        named = (request_model,) if request_model else ()
        served = served_type(request_model) if request_model else None
        required = stated or served or _type_from_names(*named)
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
    required_type = stated or served_type(llm.model) or _type_from_names(profile, llm.model)
    return Requirements(profile, required_type, (llm.model,), llm.provider, agent_fallback)


def select(
    config: SelectionConfig,
    candidates: FleetIndex | Sequence[Candidate],
    *,
    agent_id: str | None = None,
    request_model: str | None = None,
    exclude_nodes: frozenset[str] = frozenset(),
    excluded: Callable[[str], bool] | None = None,
    force_local: bool = False,
    static_tried: bool = False,
    job_type: str | None = None,
    now: float = 0.0,
    rng: random.Random | None = None,
    needs: JobNeeds = NO_NEEDS,
) -> Selection | None:
    """Choose a model for one request; `None` means no route (no hard default configured).

    A node is left out when it is in `exclude_nodes` or `excluded(node)` says so (breaker
    open: asked only of the nodes looked at), and a node's model when it cannot do what
    the job `needs` (router/selection/needs.py: capabilities, wire features) — before prefer
    lists and load. `now` is the index's clock. `static_tried`: the request's own
    profile's static config has failed, so its fallback profile comes next (on the fleet).
    """
    index = (
        candidates
        if isinstance(candidates, FleetIndex)
        else FleetIndex.of_candidates(candidates, now)
    )

    def out(node: str) -> bool:
        return node in exclude_nodes or (excluded is not None and excluded(node))

    fits = fit_check(index, needs) if needs else None
    pool = Picker(index, now=now, excluded=out, force_local=force_local, rng=rng or _RNG, fits=fits)
    served = index.type_of
    profile = resolve_profile(config, agent_id=agent_id, request_model=request_model)
    reasons: list[str] = []
    if request_model and profile is not None and not _names(config, profile, request_model):
        direct = requirements(
            config,
            None,
            agent_id=agent_id,
            request_model=request_model,
            job_type=job_type,
            served_type=served,
        )
        picked, why = _from_fleet(direct, pool)
        if picked is not None:
            return _fleet_selection(picked, direct, why)
        reasons.append(f"{_label(direct)}: {why}; using profile {profile!r}")
    reqs = requirements(
        config,
        profile,
        agent_id=agent_id,
        request_model=request_model,
        job_type=job_type,
        served_type=served,
    )
    visited: set[str | None] = set()
    while True:
        visited.add(reqs.profile)
        label = _label(reqs)
        failed_static = static_tried and len(visited) == 1  # only the request's own profile
        usable_static = (
            reqs.profile is not None
            and not failed_static
            and not (force_local and config.is_cloud(config.llm_profiles[reqs.profile]))
        )
        if reqs.required_type == "cloud_llm":
            if usable_static:
                return _static(config, reqs, _join(reasons))
            unusable = "its static config failed" if failed_static else "skipped under force_local"
            reasons.append(f"{label}: cloud profile{',' if failed_static else ''} {unusable}")
        else:
            picked, why = _from_fleet(reqs, pool)
            if picked is not None:
                return _fleet_selection(picked, reqs, _join([*reasons, why]))
            reasons.append(f"{label}: {why}")
            if usable_static:
                return _static(config, reqs, _join([*reasons, "using its static config"]))
            if reqs.profile is not None:
                reasons.append(
                    "its static config failed"
                    if failed_static
                    else "its static config is cloud, skipped under force_local"
                )
        fallback = reqs.fallback_profile
        if fallback is None:
            break
        if fallback in visited:
            reasons.append(f"fallback profile {fallback!r} already tried")
            break
        reasons.append(f"fallback profile {fallback!r}")
        reqs = requirements(
            config,
            fallback,
            agent_id=agent_id,
            request_model=None,
            job_type=job_type,
            served_type=served,
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


def _from_fleet(reqs: Requirements, pool: Picker) -> tuple[Candidate | None, str]:
    """The fleet's pick for `reqs` and the fallback reason, or `None` and why not."""
    wanted = _STAND_INS[reqs.required_type]
    typed = pool.index.groups_of(wanted)
    for pref in reqs.prefer:
        if pref == "*":
            best = _best(pool, wanted)
            return (best, "") if best is not None else (None, _why_no_candidate(reqs, pool))
        matches = [group for group in typed if pref in group.name]
        picked = (
            pool.pick(matches, _prefer_rank(pref), ("prefer", pref, wanted)) if matches else None
        )
        if picked is not None:
            return picked, ""
    # Best-candidate picks take the wanted type itself when it exists; a stand-in (code
    # for llm, llm for code) only when it does not. Prefer lists match by name in both.
    best = _best(pool, wanted)
    if best is None:
        return None, _why_no_candidate(reqs, pool)
    if reqs.profile is None and reqs.prefer:
        return None, "no eligible node serves it"
    missed = f"nothing matches prefer {list(reqs.prefer)}; " if reqs.prefer else ""
    reason = f"{missed}best {reqs.required_type} candidate" if missed else ""
    return best, reason


def _best(pool: Picker, wanted: tuple[str, ...]) -> Candidate | None:
    own = pool.pick(pool.index.groups_of(wanted[:1]), _best_rank, ("best", wanted[:1]))
    if own is not None or len(wanted) == 1:
        return own
    return pool.pick(pool.index.groups_of(wanted[1:]), _best_rank, ("best", wanted[1:]))


def _why_no_candidate(reqs: Requirements, pool: Picker) -> str:
    """Why nothing of the wanted types is eligible (only on this failure path: it scans)."""
    required_type = reqs.required_type
    wanted = _STAND_INS[required_type]
    open_local = {t: _open_nodes(pool, t) for t in wanted}
    if any(state == "excluded" for state, _ in open_local.values()):
        return f"all {required_type} candidates are on excluded nodes"
    if pool.force_local and any(
        state == "open" and not local for state, local in open_local.values()
    ):
        return f"no local {required_type} candidate (force_local)"
    return f"no {required_type} candidate"


_REASON_SCAN_LIMIT = 64  # nodes looked at to word a reason: it must not cost O(fleet)


def _open_nodes(pool: Picker, model_type: str) -> tuple[str, bool]:
    """("none" | "excluded" | "open", whether the local node is open) for one type, from
    at most `_REASON_SCAN_LIMIT` nodes (this runs per request on failure paths)."""
    local_node = pool.index.local_node
    state, local = "none", False
    looked_at = 0
    for group in pool.index.groups_of((model_type,)):
        for node in pool.index.members(group):
            looked_at += 1
            if looked_at > _REASON_SCAN_LIMIT:
                return state, local
            if not pool.index.live(node, pool.now):
                continue
            if not pool.open_node(node):
                state = "excluded" if state == "none" else state
                continue
            state = "open"
            local = local or node == local_node
            if local or not pool.force_local:
                return state, local
    return state, local


def _prefer_rank(pref: str) -> Callable[[ModelGroup, BucketKey, bool], Rank]:
    def rank(group: ModelGroup, bucket: BucketKey, local: bool) -> Rank:
        running, size = bucket
        return (not local, group.name != pref, not running, -size)

    return rank


def _best_rank(group: ModelGroup, bucket: BucketKey, local: bool) -> Rank:
    running, size = bucket
    return (not running, -size, not local)


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
