"""Subject names (DESIGN §2), built in one place, with an optional fleet prefix."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.wire import JobType, slot_kind

NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# NATS refuses a protocol line over its max_control_line (4 KiB by default), and every
# subject rides one: with a bounded prefix and node id the longest subject stays far below.
MAX_PREFIX_LENGTH = 255
WORKER_QUEUE_GROUP = "node_worker"


def validate_node_id(node_id: str) -> str:
    """A node id must be one subject-safe token; anything else is refused at start."""
    if not NODE_ID_PATTERN.fullmatch(node_id):
        raise ValueError(
            f"node id {node_id!r} is not a subject-safe token: use 1-64 of [A-Za-z0-9_-]"
        )
    return node_id


def inbox_prefix(node_id: str) -> str:
    """A worker's inboxes: `_INBOX_<node>.<random>`, a root of their own that its grants
    name, so no node needs (or gets) `_INBOX.>`. Not prefixed by the fleet's prefix."""
    return f"_INBOX_{node_id}"


def validate_prefix(prefix: str) -> str:
    """A prefix is empty or dot-separated subject-safe tokens, e.g. `prod`."""
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise ValueError(
            f"subject prefix is {len(prefix)} characters: at most {MAX_PREFIX_LENGTH}, "
            "so every subject fits on a NATS protocol line"
        )
    if prefix and not all(NODE_ID_PATTERN.fullmatch(token) for token in prefix.split(".")):
        raise ValueError(f"subject prefix {prefix!r} must be dot-separated [A-Za-z0-9_-] tokens")
    return prefix


@dataclass(frozen=True)
class Subjects:
    prefix: str = ""

    def _p(self, subject: str) -> str:
        return f"{self.prefix}.{subject}" if self.prefix else subject

    def job(self, node_id: str, job_type: JobType) -> str:
        """Where node `node_id` takes jobs of a type: one subject per slot kind (code jobs
        ride the llm subject)."""
        return self._p(f"node.{node_id}.{slot_kind(job_type)}.request")

    def cancel(self, node_id: str) -> str:
        """Where a caller says it no longer wants a job: `{"job_id": ...}`."""
        return self._p(f"node.{node_id}.cancel")

    def caps(self, node_id: str) -> str:
        return self._p(f"node.{node_id}.caps")

    def show(self, node_id: str) -> str:
        """Where node `node_id` describes a model it serves (services/show.py)."""
        return self._p(f"node.{node_id}.show")

    def capabilities(self, node_id: str) -> str:
        return self._p(f"ncs.capabilities.{node_id}")

    def all_capabilities(self) -> str:
        return self._p("ncs.capabilities.*")

    def discover(self) -> str:
        return self._p("ncs.discover")
