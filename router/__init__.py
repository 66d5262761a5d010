"""The router: the fleet view, selection, targets and the attempt decision, the health
board, the NATS edge with liveness, the HTTP API."""

from router.config import RouterSettings, load_router_settings
from router.service import RouterService

__all__ = ["RouterService", "RouterSettings", "load_router_settings"]
