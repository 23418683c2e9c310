"""Placement: session ids, part keys, consistent hashing with bounded loads, the shard map.

Pure and deterministic: the same inputs give the same placement in every process, whatever
`PYTHONHASHSEED` says, and nothing here reads a clock, a socket or a file.
"""

from __future__ import annotations

from forehand.placement._codec import MAP_ENCODING
from forehand.placement._config import PlacementConfig
from forehand.placement._delta import (
    Delta,
    Operation,
    PartsAdded,
    PartsRemoved,
    Placement,
    PlacementOverridden,
    ServerDrained,
    ServerJoined,
    ServerLeft,
    ServerMarkedDead,
    ServerReweighted,
    ServerUndrained,
)
from forehand.placement._diff import MapDiff, PartMoved
from forehand.placement._errors import (
    InvalidDeltaError,
    InvalidPartKeyError,
    PartKeyCollisionError,
    StaleDeltaError,
    UnknownPartKeyError,
)
from forehand.placement._hashing import part_key_hash
from forehand.placement._ids import (
    PART_NAME_LENGTH_MAX,
    SESSION_ID_BYTES,
    PartKey,
    check_part_name,
    check_session_id,
    format_session_id,
    new_session_id,
    parse_session_id,
    session_id_time_ms,
)
from forehand.placement._servers import (
    SERVER_TRANSITIONS,
    DrainCause,
    ServerEntry,
    ServerState,
    ServerTransition,
)
from forehand.placement._shard_map import ServerParts, ShardMap
from forehand.placement._state import check_server_entry
from forehand.placement._strategies import (
    Layout,
    LayoutFactory,
    build_layout,
    register_strategy,
    strategy_names,
)

__all__ = [
    "MAP_ENCODING",
    "PART_NAME_LENGTH_MAX",
    "SERVER_TRANSITIONS",
    "SESSION_ID_BYTES",
    "Delta",
    "DrainCause",
    "InvalidDeltaError",
    "InvalidPartKeyError",
    "Layout",
    "LayoutFactory",
    "MapDiff",
    "Operation",
    "PartKey",
    "PartKeyCollisionError",
    "PartMoved",
    "PartsAdded",
    "PartsRemoved",
    "Placement",
    "PlacementConfig",
    "PlacementOverridden",
    "ServerDrained",
    "ServerEntry",
    "ServerJoined",
    "ServerLeft",
    "ServerMarkedDead",
    "ServerParts",
    "ServerReweighted",
    "ServerState",
    "ServerTransition",
    "ServerUndrained",
    "ShardMap",
    "StaleDeltaError",
    "UnknownPartKeyError",
    "build_layout",
    "check_part_name",
    "check_server_entry",
    "check_session_id",
    "format_session_id",
    "new_session_id",
    "parse_session_id",
    "part_key_hash",
    "register_strategy",
    "session_id_time_ms",
    "strategy_names",
]
