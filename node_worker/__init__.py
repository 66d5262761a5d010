"""The node worker: one per GPU node, in front of the runtimes already there."""

from node_worker.config import WorkerSettings, load_worker_settings
from node_worker.worker import Worker

__all__ = ["Worker", "WorkerSettings", "load_worker_settings"]
