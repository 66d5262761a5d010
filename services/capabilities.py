"""The capabilities record (DESIGN §4): what one node serves right now.

Workers publish it on `ncs.capabilities.<id>` every heartbeat and at once on change,
reply with it on `node.<id>.caps` and to `ncs.discover`; routers and `inferbus nodes`
read it. Lenient on input (unknown fields ignored) so mixed versions interoperate.
"""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

# loading: the runtime answers but is still loading its model (llama.cpp's 503): not
# routable, and not an error.
HealthState = Literal["unknown", "healthy", "degraded", "loading", "unhealthy", "disabled"]
ModelType = Literal["llm", "vision", "code", "embed"]

# How long a router keeps a node's record without a newer one before it takes the node for
# stale: a worker sends one every heartbeat and says its record lives three of them, so
# one or two lost heartbeats do not flap a node. The bound keeps a record (and a dead node
# with it) from being kept longer than an hour; a worker whose heartbeat would make its
# record longer-lived is refused at start (node_worker/config.py).
MAX_RECORD_TTL_S = 3600.0
HEARTBEATS_PER_TTL = 3
MAX_HEARTBEAT_S = MAX_RECORD_TTL_S / HEARTBEATS_PER_TTL


def record_ttl_s(heartbeat_s: float) -> float:
    """The `ttl_s` a worker announcing every `heartbeat_s` gives its record."""
    return HEARTBEATS_PER_TTL * heartbeat_s


class _Record(BaseModel):
    # Finite numbers only: NaN and Infinity parse as JSON here but no JSON answer can say them.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class Pricing(_Record):
    """Price per million tokens, in whatever currency the operator bills in."""

    input_per_1m: float = Field(default=0.0, ge=0)
    output_per_1m: float = Field(default=0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return round(
            (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6, 8
        )


class BackendStats(_Record):
    invocations: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0


class RuntimeStatus(_Record):
    """One configured runtime (backend) of the node, as the worker sees it now."""

    kind: str
    url: str
    state: HealthState
    latency_ms: float | None = None
    models: int = 0
    last_error: str | None = None
    stats: BackendStats = BackendStats()


class ServedModel(_Record):
    """One model the node serves. The facts after `pricing` are what the runtime reports
    about the model file (Ollama's `/api/tags` details), shown by the router's `/api/tags`;
    runtimes that report none leave them out."""

    name: str
    type: ModelType
    runtime: str
    size_gb: float | None = None
    running: bool | None = None
    context_window: int | None = None
    family: str | None = None
    capabilities: tuple[str, ...] = ()
    pricing: Pricing | None = None
    size_bytes: int | None = None
    digest: str | None = None
    modified_at: str | None = None
    format: str | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None


class RunningModel(_Record):
    """A model loaded in a runtime of the node now (Ollama's `/api/ps` entry): the memory
    it takes and, for runtimes that unload idle models, when it will be unloaded. Apart
    from `served_models` because `expires_at` moves with every job: the router's index
    (and what it caches) does not change when only these do."""

    name: str
    size_bytes: int | None = None
    size_vram: int | None = None
    expires_at: str | None = None
    context_length: int | None = None


class Load(_Record):
    inflight: int
    capacity: int

    @property
    def saturated(self) -> bool:
        return self.inflight >= self.capacity


class Gpu(_Record):
    name: str
    memory_total_mb: int | None = None
    memory_used_mb: int | None = None
    utilization_pct: int | None = None


class Hardware(_Record):
    gpus: tuple[Gpu, ...] = ()


class Capabilities(_Record):
    # What a node serves, then what moves from one heartbeat to the next. The order is the
    # order on the wire: a router compares the bytes before the moving fields with the
    # node's previous record and parses only the rest (router/fleet/records.py).
    node_id: str
    version: str
    # Bounded and finite: a record saying Infinity would be kept (and its node) forever.
    ttl_s: float = Field(gt=0, le=MAX_RECORD_TTL_S, allow_inf_nan=False)
    served_models: tuple[ServedModel, ...] = ()
    hardware: Hardware | None = None
    # Job fields this worker honours or refuses (services.needs.WIRE_FEATURES). A worker
    # older than a field drops it without a word, so a router sends a job that uses one
    # only to nodes that list it; absent means none of them.
    wire_features: tuple[str, ...] = ()
    # Random per worker process: two processes announcing one node id can be told apart.
    instance: str | None = None
    runtimes: tuple[RuntimeStatus, ...] = ()
    # What is loaded now, with memory and expiry (Ollama's `/api/ps`); older workers send none.
    running_models: tuple[RunningModel, ...] = ()
    load: dict[str, Load] = Field(default_factory=dict)
    seq: int
    ts: float = Field(description="unix seconds when the record was built (display only)")


def encode_capabilities(record: Capabilities) -> bytes:
    return record.model_dump_json(exclude_none=True).encode()


def decode_capabilities(data: bytes) -> Capabilities | None:
    """A record, or None for bytes that are not one (never raises)."""
    try:
        return Capabilities.model_validate_json(data)
    except pydantic.ValidationError:
        return None
