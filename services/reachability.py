"""What a process says while NATS cannot be reached: once when it goes, with the fix, once
a minute while it stays away, and once when it is back.

nats-py retries every `reconnect_time_wait` (half a second here, so that a restarted
server is found again at once) and reports every failed attempt to the error callback;
logged as they come, that is two lines a second for as long as the outage lasts. This is
the pure decision of which attempts are said, with the clock passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

FIX = "start nats-server or check nats_url"


@dataclass
class NatsOutage:
    """One process's view of whether NATS answers; `servers` is how it is told (no
    secrets: redact URLs before)."""

    servers: str
    repeat_s: float = 60.0
    since: float | None = None  # when the first failed attempt of this outage was seen
    attempts: int = 0
    _said_at: float = field(default=-math.inf, repr=False)

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, error: str, now: float) -> str | None:
        """Count a failed attempt; the line to log now, or None to stay quiet."""
        if self.since is None:
            self.since = now
        self.attempts += 1
        if now - self._said_at < self.repeat_s:
            return None
        first = self._said_at == -math.inf
        self._said_at = now
        if first:
            return f"nats not reachable at {self.servers} ({error}); retrying: {FIX}"
        return (
            f"nats still not reachable at {self.servers} after {now - self.since:.0f} s "
            f"({self.attempts} attempts; last: {error}): {FIX}"
        )

    def reached(self, now: float) -> str | None:
        """NATS answered: the line saying the outage is over, or None when there was none."""
        if self.since is None:
            return None
        line = (
            f"nats reached at {self.servers} after {now - self.since:.0f} s "
            f"and {self.attempts} failed attempts"
        )
        self.since = None
        self.attempts = 0
        self._said_at = -math.inf
        return line
