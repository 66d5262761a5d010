"""Which served models may take a job: what it needs from the model and from the worker.

Two things must hold before a node is even ranked (DESIGN §6):

- the served model can do what the job asks (`services.needs.needed_capabilities`: tools
  → `tools`, images → `vision`, an embed job → `embedding`, `suffix` → `insert`). A model
  whose record lists no capabilities is "unknown" and is not filtered out (an older
  worker); the worker refuses by name if it really cannot;
- the worker understands every new job field the job uses (`wire_features` in its
  record): an older worker would drop the field without a word, so it never gets the job;
- a job bringing its own prompt template (`extra.template`) goes to a copy of the model
  that an Ollama runtime serves (`services.needs.TEMPLATE_RUNTIMES`): no other runtime
  applies a request's template.

Both checks are O(1) per node asked (the record's tuples are tiny), so selection stays
O(candidates of the model) per request. The descriptions are built only on the failure
path, to say which capability or field was missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from router.fleet.index import FleetIndex, ModelGroup
from services.needs import TEMPLATE_RUNTIMES, needed_capabilities, wants_template
from services.wire import JobRequest, JobType

__all__ = ["NO_NEEDS", "JobNeeds", "Missing", "fit_check", "job_needs", "what_is_missing"]


@dataclass(frozen=True)
class JobNeeds:
    """What one job needs: model capabilities (with the field needing each), worker features."""

    capabilities: tuple[tuple[str, str], ...] = ()  # (capability, field)
    wire_features: tuple[str, ...] = ()
    runtimes: frozenset[str] | None = None  # the runtimes that may serve it (None: any)

    def __bool__(self) -> bool:
        return bool(self.capabilities or self.wire_features or self.runtimes is not None)


NO_NEEDS = JobNeeds()


def wire_features_of(job: JobRequest, job_type: JobType) -> tuple[str, ...]:
    """The `wire_features` names (services.needs.WIRE_FEATURES) this job uses."""
    params = job.params
    uses = {
        "tools": bool(job.tools)
        or job.tool_choice is not None
        or any(m.tool_calls or m.tool_call_id for m in job.messages or ()),
        "response_format": job.response_format is not None and job.response_format.type != "text",
        "logprobs": bool(params.logprobs),
        "penalties": params.presence_penalty is not None or params.frequency_penalty is not None,
        "n": params.n is not None and params.n > 1,
        "extra": bool(job.extra),
        "embed": job_type == "embed",
        "raw": job.raw or job.suffix is not None,
        "continue": bool(job.continue_final),
        "template": wants_template(job),
    }
    return tuple(name for name, used in uses.items() if used)


def job_needs(job: JobRequest, job_type: JobType) -> JobNeeds:
    """Exactly what the worker's own refusal checks (services.needs), so the router never
    sends a job the worker would refuse for its model, and never skips one it would take."""
    caps = tuple((need.capability, need.field) for need in needed_capabilities(job, job_type))
    runtimes = TEMPLATE_RUNTIMES if wants_template(job) else None
    return JobNeeds(caps, wire_features_of(job, job_type), runtimes)


def fit_check(index: FleetIndex, needs: JobNeeds) -> Callable[[ModelGroup, str], bool]:
    """A predicate: may this node's copy of this model take the job?"""

    def fits(group: ModelGroup, node: str) -> bool:
        return what_is_missing(index, group, node, needs) is None

    return fits


@dataclass(frozen=True)
class Missing:
    """Why a node's model cannot take a job: the model lacks a capability, or the worker
    is too old to understand a field (`by_model` False)."""

    field: str
    reason: str
    by_model: bool

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def what_is_missing(
    index: FleetIndex, group: ModelGroup, node: str, needs: JobNeeds
) -> Missing | None:
    """Why this node's model cannot take the job, or None when it can."""
    entry = index.nodes.get(node)
    if entry is None:
        return None
    model = entry.models.get((group.name, group.type))
    if needs.runtimes is not None and model is not None and model.runtime not in needs.runtimes:
        reason = (
            f"model {group.name!r} is served by {model.runtime}; only "
            f"{' or '.join(sorted(needs.runtimes))} applies a request's own template"
        )
        return Missing("template", reason, by_model=True)
    capabilities = model.capabilities if model is not None else ()
    if capabilities:
        for capability, field in needs.capabilities:
            if capability not in capabilities:
                reason = f"model {group.name!r} does not support {capability}"
                return Missing(field, reason, by_model=True)
    known = entry.record.wire_features
    for feature in needs.wire_features:
        if feature not in known:
            reason = f"the worker on node {node} serving {group.name!r} is too old to understand it"
            return Missing(feature, reason, by_model=False)
    return None
