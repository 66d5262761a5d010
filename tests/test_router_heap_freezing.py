"""When the router freezes its heap again: each time the fleet has doubled since the last
freeze, once it is more than a handful of nodes."""

from __future__ import annotations

import pytest

from router.__main__ import fleet_outgrew_the_frozen_heap


@pytest.mark.parametrize(
    ("nodes", "frozen_with", "freeze_again"),
    [
        (0, 0, False),  # nobody yet
        (63, 0, False),  # a handful: not worth a full collection
        (64, 0, True),  # the fleet joined after start-up
        (3000, 0, True),
        (3000, 3000, False),  # frozen with this fleet
        (5999, 3000, False),
        (6000, 3000, True),  # doubled since
        (100, 3000, False),  # shrank: what is frozen stays frozen
    ],
)
def test_the_heap_is_frozen_again_when_the_fleet_doubled(
    nodes: int, frozen_with: int, freeze_again: bool
) -> None:
    assert fleet_outgrew_the_frozen_heap(nodes, frozen_with) is freeze_again
