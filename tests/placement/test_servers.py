"""Server states change only along the transition table."""

from __future__ import annotations

import pytest

from forehand.placement import (
    SERVER_TRANSITIONS,
    InvalidDeltaError,
    ServerState,
    ServerTransition,
)
from forehand.placement._servers import next_server_state, weight_to_milli


@pytest.mark.parametrize("state", list(ServerState))
@pytest.mark.parametrize("transition", list(ServerTransition))
def test_transitions_follow_the_table(state: ServerState, transition: ServerTransition) -> None:
    """A listed transition gives the listed state; any other raises InvalidDeltaError."""
    if (state, transition) in SERVER_TRANSITIONS:
        assert next_server_state("s", state, transition) == SERVER_TRANSITIONS[state, transition]
    else:
        with pytest.raises(InvalidDeltaError):
            next_server_state("s", state, transition)


def test_only_draining_or_dead_servers_leave() -> None:
    """Leaving removes the entry, and only from DRAINING or DEAD."""
    leaving = {state for (state, move), after in SERVER_TRANSITIONS.items() if after is None}
    assert leaving == {ServerState.DRAINING, ServerState.DEAD}
    assert all(
        move is ServerTransition.LEAVE
        for (_, move), after in SERVER_TRANSITIONS.items()
        if after is None
    )


def test_weights_are_integer_thousandths() -> None:
    """Weights become integers, at least one thousandth, so sums are exact."""
    assert weight_to_milli(1.0) == 1000
    assert weight_to_milli(0.0001) == 1
    assert weight_to_milli(2.5) == 2500
