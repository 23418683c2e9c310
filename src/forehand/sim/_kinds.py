"""Kinds of entries in the simulator's event heap, as small ints so dispatch stays cheap.

An entry is `(time_us, tiebreak, sequence, kind, node_id, number, payload, source, extra)`; what
`number`, `payload`, `source` and `extra` hold depends on the kind, as listed beside each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DELIVER = 0
"""A message arrives: number = connection epoch (-1 for a datagram), extra = the connection."""
NOTICE = 1
"""A connection-lost notice arrives: number = target incarnation, source = the peer."""
TIMER = 2
"""A core's timer is due: number = incarnation; stale when the node re-armed since."""
CPU = 3
"""The node's CPU finished the input at the head of its inbox: number = incarnation."""
STORE = 4
"""A store request completes: number = incarnation, payload = the request."""
COMMAND = 5
"""A command reaches a core: payload = the action, source = its label for the trace."""
CALL = 6
"""A scheduled callback runs (faults, scenario hooks): payload = the callable, source = label."""
CONNECTION_TIMEOUT = 7
"""A stalled connection gives up: number = stall generation, extra = the connection."""
OPENED = 8
"""A connection-opened notice arrives: number = the epoch of its lane, extra = the connection."""

INPUT_MESSAGE = 0
"""An inbox item holding a message (or a connection notice)."""
INPUT_TIMER = 1
"""An inbox item asking the core to run its timer."""
INPUT_STORE_RESULT = 2
"""An inbox item holding a store result."""
INPUT_COMMAND = 3
"""An inbox item holding a command action."""

Schedule = Callable[[int, int, str, int, Any, str, Any], None]
"""Pushes an entry: (time_us, kind, node_id, number, payload, source, extra)."""
