"""When a stream's pieces came: the time to the first, and the gaps between the rest.

Both processes keep one per streamed answer (the worker per runtime call, the router per
request) for their time-to-first-token and inter-token metrics and spans. Times are
passed in (any monotonic clock, seconds); the gaps kept are bounded, so a very long
answer costs a fixed amount.
"""

from __future__ import annotations

__all__ = ["TokenTimes"]

MAX_GAPS = 4096


class TokenTimes:
    __slots__ = ("_last", "first_s", "gaps_s", "pieces", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_s: float | None = None  # seconds from start to the first piece
        self.gaps_s: list[float] = []  # seconds between consecutive pieces
        self.pieces = 0
        self._last = started

    def piece(self, at: float) -> None:
        """A piece arrived at `at`."""
        if self.first_s is None:
            self.first_s = max(0.0, at - self.started)
        elif len(self.gaps_s) < MAX_GAPS:
            self.gaps_s.append(max(0.0, at - self._last))
        self._last = at
        self.pieces += 1
