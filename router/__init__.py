"""The router: the fleet view, selection, breakers, offload with fallback, the HTTP API."""

from router.config import RouterSettings, load_router_settings
from router.service import RouterService

__all__ = ["RouterService", "RouterSettings", "load_router_settings"]
