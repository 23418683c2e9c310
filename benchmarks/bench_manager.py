"""ManagerCore throughput: sessions opened (committed, published, answered) beside bare map work.

Opens also run in bursts of `BURST` arriving before the store answers, against the same opens one
at a time: what the group commit of opens saves.

The baseline is the least any manager must do per session: mint the id, apply the PartsAdded
delta to the shard map and encode it for the store and the servers. The candidate is the whole
core: OPEN_SESSION in, the stability check, the commit through a `MemoryStore`, MapPublished to
every server, token and credential sealing, and SESSION_OPENED out. A second row measures
heartbeats (liveness, load, part progress, the risk policy: the online predictor by default,
the plain threshold rule in a third row) against decoding nothing at all: recording the same
report in a dict. A fourth row measures handoff decisions: operator moves of
one part each (`ManagerCore.handoff`) until the manager assigned every one (target chosen, the
map change committed through the store, HandoffAssigned sent), against the bare map work of the
same moves: look the placement up, take the first replica as the target, and apply and encode
the override delta. Session setup is outside the timed part of both, and the handoff limits are
raised so that decisions, not completions, are what is measured.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

# Run as a script (make bench): make the repository root importable for benchmarks._common.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Comparison, best_rate, compare, print_comparisons, run_store

from forehand.core._manager_config import ManagerConfig, RiskPolicyKind
from forehand.core._manager_events import MovesDropped
from forehand.core.manager import ManagerCore
from forehand.core.messages import (
    HandoffAssigned,
    HeartbeatReported,
    LoadReport,
    ServerAnnounced,
)
from forehand.core.tokens import KeyRing, TokenSealer
from forehand.placement import PartKey, Placement, PlacementConfig, ShardMap, new_session_id
from forehand.stores import MemoryStore
from forehand.wire import Credential, MapRequest, OpenSession, SessionOpened

SERVERS = tuple(f"s{index}" for index in range(8))
PARTS = ("auth", "cart")
SESSIONS = 2_000
HEARTBEATS = 20_000
HANDOFFS = 2_000
BURST = 200
LOCATE_SESSIONS = 64
LOCATES = 2_000
HANDOFF_PART = ("cart",)
LOAD = LoadReport(
    cpu_utilization=0.2, queue_depth=1, latency_us_p99=900, error_ratio=0.0, requests_per_second=5
)


def _manager(config: ManagerConfig | None = None) -> tuple[ManagerCore, MemoryStore]:
    core = ManagerCore(
        config=config or ManagerConfig(),
        placement_config=PlacementConfig(replica_count=2),
        sealer=TokenSealer(KeyRing({1: bytes(32)}, current_key_id=1), rng=random.Random(1)),
        rng=random.Random(2),
        now_us=0,
    )
    store = MemoryStore()
    run_store(core, store)
    for server in SERVERS:
        announce = ServerAnnounced(
            server_id=server, incarnation=1, address=f"{server}:1", zone=server, weight=1.0
        )
        core.receive_message(announce, source=server, now_us=0)
        run_store(core, store)
    core.messages_to_send()
    while core.next_event() is not None:
        pass
    return core, store


def _open(count: int, burst: int) -> None:
    """`count` OPEN_SESSIONs through a whole manager, `burst` at a time before the store answers
    any (the opens behind the first commit of a burst go as one version,
    `commit_group_changes_max`)."""
    core, store = _manager()
    for start in range(0, count, burst):
        for request_id in range(start, min(start + burst, count)):
            core.receive_message(
                OpenSession(request_id=request_id, parts=PARTS), source="c1", now_us=request_id
            )
        run_store(core, store)
        core.messages_to_send()
        while core.next_event() is not None:
            pass


def open_sessions(count: int) -> None:
    """The candidate: `count` OPEN_SESSIONs through a whole manager, one at a time."""
    _open(count, 1)


def open_bursts(count: int) -> None:
    """`count` OPEN_SESSIONs arriving `BURST` at a time."""
    _open(count, BURST)


def apply_deltas(count: int) -> None:
    """The baseline: mint ids, apply and encode the same deltas on a bare map."""
    rng = random.Random(2)
    shard_map = ShardMap.empty(config=PlacementConfig(replica_count=2))
    for server in SERVERS:
        shard_map = shard_map.apply(
            shard_map.join_server(server_id=server, address=f"{server}:1", zone=server)
        )
    for index in range(count):
        delta = shard_map.add_session_parts(new_session_id(now_ms=index, rng=rng), PARTS)
        ShardMap.encode_delta(delta)
        shard_map = shard_map.apply(delta)


def _located_client() -> tuple[ManagerCore, list[Credential]]:
    """A manager with `LOCATE_SESSIONS` sessions opened on connection c1, and their
    credentials (the sessions a client presents when it locates them)."""
    core, store = _manager()
    for request_id in range(LOCATE_SESSIONS):
        core.receive_message(
            OpenSession(request_id=request_id, parts=PARTS), source="c1", now_us=request_id
        )
        run_store(core, store)
    credentials = [
        Credential(session_id=out.message.session_id, credential=out.message.credential)
        for out in core.messages_to_send()
        if isinstance(out.message, SessionOpened)
    ]
    while core.next_event() is not None:
        pass
    return core, credentials


def _locate(count: int, *, presented: bool) -> None:
    core, credentials = _located_client()
    frame = MapRequest(map_version=0, credentials=tuple(credentials) if presented else ())
    for index in range(count):
        core.receive_message(frame, source="c1", now_us=LOCATE_SESSIONS + index)
        core.messages_to_send()


def locate(count: int) -> None:
    """The candidate: `count` MAP_REQUESTs presenting the credentials of the connection's own
    sessions, answered (a session the connection proved is not checked again)."""
    _locate(count, presented=True)


def locate_bare(count: int) -> None:
    """The baseline: the same MAP_REQUESTs presenting no credential (the same answer: the
    sessions are bound to the connection already)."""
    _locate(count, presented=False)


def heartbeats(count: int, config: ManagerConfig | None = None) -> None:
    """The candidate: `count` heartbeats through a whole manager (the default risk policy, the
    online predictor, scores every heartbeat)."""
    core, _ = _manager(config)
    for sequence in range(count):
        server = SERVERS[sequence % len(SERVERS)]
        message = HeartbeatReported(
            server_id=server,
            incarnation=1,
            sequence=sequence,
            map_version=1,
            load=LOAD,
            parts=(),
        )
        core.receive_message(message, source=server, now_us=sequence * 100)


def heartbeats_rule(count: int) -> None:
    """The candidate with the plain threshold risk policy instead of the predictor."""
    heartbeats(count, ManagerConfig(risk_policy=RiskPolicyKind.RULE))


def record_reports(count: int) -> None:
    """The baseline: keep the newest report per server in a dict."""
    latest: dict[str, LoadReport] = {}
    for sequence in range(count):
        latest[SERVERS[sequence % len(SERVERS)]] = LOAD


def _handoff_manager(count: int) -> tuple[ManagerCore, MemoryStore, list[bytes]]:
    """A manager with `count` one-part sessions open, and limits that let every move start."""
    config = ManagerConfig(
        handoffs_per_server_max=count,
        handoffs_concurrent_max=count,
        handoff_queue_parts_max=max(count, ManagerConfig().handoff_queue_parts_max),
        pending_deltas_max=max(count, ManagerConfig().pending_deltas_max),
        # No heartbeats flow here: the servers stay alive for the simulated minutes it takes.
        suspect_timeout_ms=3_600_000,
        failure_timeout_ms=7_200_000,
    )
    core, store = _manager(config)
    session_ids = []
    for request_id in range(count):
        core.receive_message(
            OpenSession(request_id=request_id, parts=HANDOFF_PART), source="c1", now_us=request_id
        )
        run_store(core, store)
        for outbound in core.messages_to_send():
            session_id = getattr(outbound.message, "session_id", None)
            if isinstance(session_id, bytes) and outbound.destination == "c1":
                session_ids.append(session_id)
        while core.next_event() is not None:
            pass
    assert len(set(session_ids)) == count, "every OPEN_SESSION answered with its session"
    return core, store, list(dict.fromkeys(session_ids))


def decide_handoffs(core: ManagerCore, store: MemoryStore, session_ids: list[bytes]) -> int:
    """The candidate: move every session's part and run the manager until no move is left to
    decide before the first handoff deadline; the moves decided (assigned to a target in a
    committed map, or dropped because an earlier handoff's map change already moved the part).

    A few moves wait for a handoff of a server they share to complete, which needs the servers'
    reports; they are not counted, and the rate is over the moves decided in the time taken.
    """
    now_us = len(session_ids) + 1
    deadline_us = now_us + ManagerConfig().handoff_deadline_ms * 1000
    for session_id in session_ids:
        assert core.handoff(session_id, now_us=now_us) == 1
    assigned: set[int] = set()
    decided = 0
    while True:
        run_store(core, store)
        for outbound in core.messages_to_send():
            message = outbound.message
            if isinstance(message, HandoffAssigned) and message.handoff_id not in assigned:
                assigned.add(message.handoff_id)
                decided += len(message.parts)
        while (event := core.next_event()) is not None:
            if isinstance(event, MovesDropped):
                decided += len(event.parts)
        due = core.timer_us()
        if decided >= len(session_ids) or due is None or due >= deadline_us:
            break
        now_us = max(now_us, due)
        core.handle_timer(now_us=now_us)
    assert decided >= 0.9 * len(session_ids), f"only {decided} of {len(session_ids)} decided"
    return decided


def _handoff_map(count: int) -> tuple[ShardMap, list[bytes]]:
    rng = random.Random(2)
    shard_map = ShardMap.empty(config=PlacementConfig(replica_count=2))
    for server in SERVERS:
        shard_map = shard_map.apply(
            shard_map.join_server(server_id=server, address=f"{server}:1", zone=server)
        )
    session_ids = [new_session_id(now_ms=index, rng=rng) for index in range(count)]
    for session_id in session_ids:
        shard_map = shard_map.apply(shard_map.add_session_parts(session_id, HANDOFF_PART))
    return shard_map, session_ids


def bare_handoffs(shard_map: ShardMap, session_ids: list[bytes]) -> int:
    """The baseline: lookup, first replica as target, apply and encode the override delta."""
    for session_id in session_ids:
        key = PartKey(session_id=session_id, part=HANDOFF_PART[0])
        placement = shard_map.lookup(key)
        target = placement.replicas[0]
        replicas = (placement.primary, *placement.replicas[1:])
        delta = shard_map.override_placement(key, Placement(primary=target, replicas=replicas))
        ShardMap.encode_delta(delta)
        shard_map = shard_map.apply(delta)
    return len(session_ids)


def handoff_row(count: int, rounds: int) -> Comparison:
    """Handoff decisions per second beside the bare map work, round by round."""
    candidate = baseline = 0.0
    for _ in range(rounds):
        candidate = max(
            candidate,
            best_rate(lambda: _handoff_manager(count), decide_handoffs, rounds=1),
        )
        baseline = max(baseline, best_rate(lambda: _handoff_map(count), bare_handoffs, rounds=1))
    return Comparison(
        name="handoff decisions (1 part each)",
        candidate_per_second=candidate,
        baseline_per_second=baseline,
        baseline_name="lookup + override delta apply + encode",
    )


def main() -> None:
    quick = "--quick" in sys.argv
    sessions, beats, rounds = (200, 2_000, 1) if quick else (SESSIONS, HEARTBEATS, 3)
    handoffs = 200 if quick else HANDOFFS
    locates = 200 if quick else LOCATES
    # The first manager imports and sets up the risk policy's models (seconds); not a session's.
    _manager()
    rows = [
        compare(
            "sessions opened",
            candidate=open_sessions,
            baseline=apply_deltas,
            baseline_name="bare ShardMap apply + encode",
            count=sessions,
            rounds=rounds,
        ),
        compare(
            f"sessions opened, {BURST} arriving together",
            candidate=open_bursts,
            baseline=open_sessions,
            baseline_name="the same, one at a time",
            count=sessions,
            rounds=rounds,
        ),
        compare(
            "heartbeats handled",
            candidate=heartbeats,
            baseline=record_reports,
            baseline_name="dict store of the report",
            count=beats,
            rounds=rounds,
        ),
        compare(
            "heartbeats handled, rule risk policy",
            candidate=heartbeats_rule,
            baseline=record_reports,
            baseline_name="dict store of the report",
            count=beats,
            rounds=rounds,
        ),
        handoff_row(handoffs, rounds),
        compare(
            f"MAP_REQUESTs of {LOCATE_SESSIONS} proved sessions answered",
            candidate=locate,
            baseline=locate_bare,
            baseline_name="the same, presenting no credential",
            count=locates,
            rounds=rounds,
        ),
    ]
    print_comparisons("ManagerCore", rows)


if __name__ == "__main__":
    main()
