"""What selection chooses from: one served model on one node, as the router sees it now.

Built by the fleet index (`router/fleet/index.py`) for the nodes selection picks, from
the nodes' records plus the router's own count of work in flight per node.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.capabilities import ModelType


@dataclass(frozen=True)
class Candidate:
    name: str
    type: ModelType
    node: str
    local: bool  # the node is the router's configured local node
    node_age_s: float  # how old the node's capability data is
    runtime: str
    running: bool | None = None
    size_gb: float | None = None
    inflight: int = 0  # the node's slots of this model's kind: heartbeat + router's own count
    capacity: int = 1

    @property
    def load_ratio(self) -> float:
        return self.inflight / self.capacity if self.capacity > 0 else 1.0

    @property
    def saturated(self) -> bool:
        return self.inflight >= self.capacity
