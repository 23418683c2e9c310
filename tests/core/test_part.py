"""Tests of `forehand.core._part`: the part state machine, its log, dedup table and execution."""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgspec
import pytest

from forehand.core._part import (
    PART_TRANSITIONS,
    SHORT_DEDUP_ENTRIES_MAX,
    SHORT_LOG_ENTRIES_MAX,
    DedupTable,
    HandlerResult,
    Part,
    PartLog,
    PartSpec,
    PartState,
    PartTrigger,
    part_transition_table,
)
from forehand.core.messages import LogEntry, PartRef, PartRole
from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire import ResponseStatus

REF = PartRef(session_id=b"s" * 16, part="counter")


def counter_handler(state: Any, op: str, payload: bytes) -> HandlerResult:
    """A deterministic counter: `add` adds the payload's integer, `get` reads, `boom` raises."""
    if op == "add":
        total = int(state) + int(payload)
        return HandlerResult(state=total, status=ResponseStatus.OK, result=str(total).encode())
    if op == "get":
        return HandlerResult(state=state, status=ResponseStatus.OK, result=str(state).encode())
    if op == "boom":
        raise ValueError("application bug")
    return HandlerResult(state=state, status=ResponseStatus.UNKNOWN_OP, result=b"")


SPEC = PartSpec(handler=counter_handler, initial_state=lambda: 0, read_ops=frozenset({"get"}))


def make_part(*, log_entries_max: int = 16, dedup_entries_max: int = 16) -> Part:
    """A fresh counter part at epoch 1."""
    return Part(
        ref=REF,
        spec=SPEC,
        epoch=1,
        log_entries_max=log_entries_max,
        dedup_entries_max=dedup_entries_max,
    )


def entry(seq: int, *, epoch: int = 1, request_id: int | None = None) -> LogEntry:
    """An `add 1` entry at `seq`."""
    return LogEntry(
        seq=seq,
        request_id=seq if request_id is None else request_id,
        op="add",
        payload=b"1",
        status=0,
        result=str(seq).encode(),
        epoch=epoch,
    )


def test_table_rows_match_the_mapping() -> None:
    """The exported table lists every legal transition exactly once."""
    rows = part_transition_table()
    assert len(rows) == len(PART_TRANSITIONS)
    assert (PartState.PRIMARY, PartTrigger.HANDOFF_ASSIGNED, PartState.HANDING_OFF) in rows


def test_every_non_terminal_state_can_be_left() -> None:
    """Every state but DROPPED has an outgoing transition, and DROPPED has none."""
    sources = {source for source, _, _ in part_transition_table()}
    assert sources == set(PartState) - {PartState.DROPPED}


def test_illegal_transition_raises_local_protocol_error() -> None:
    """A replica cannot be handed off: that trigger is illegal from REPLICA."""
    part = make_part()
    part.transition(PartTrigger.PLACED_AS_REPLICA)
    with pytest.raises(LocalProtocolError):
        part.transition(PartTrigger.HANDOFF_ASSIGNED)
    assert part.state is PartState.REPLICA


def test_handoff_source_path() -> None:
    """PRIMARY -> HANDING_OFF -> BACKUP -> REPLICA is legal, and roles follow."""
    part = make_part()
    roles = []
    for trigger in (
        PartTrigger.PLACED_AS_PRIMARY,
        PartTrigger.HANDOFF_ASSIGNED,
        PartTrigger.SEAL_ACKNOWLEDGED,
    ):
        part.transition(trigger)
        roles.append(part.role)
    assert roles == [PartRole.PRIMARY, PartRole.HANDING_OFF, PartRole.BACKUP]
    assert part.transition(PartTrigger.DEMOTED) is PartState.BACKUP
    assert part.role is PartRole.REPLICA


def test_execute_assigns_contiguous_seqs_and_records_dedup() -> None:
    """Executions get seqs 1, 2, 3 and each request id maps to its entry."""
    part = make_part()
    entries = [part.execute(request_id=100 + index, op="add", payload=b"2") for index in range(3)]
    assert [item.seq for item in entries] == [1, 2, 3]
    assert part.data == 6
    assert part.dedup.get(101) == entries[1]
    assert entries[2].result == b"6"
    assert all(item.epoch == 1 for item in entries)


def test_read_runs_the_handler_without_logging() -> None:
    """A read answers from the state and leaves log and state untouched."""
    part = make_part()
    part.execute(request_id=1, op="add", payload=b"5")
    assert part.read(op="get", payload=b"") == (0, b"5", False)
    assert part.applied_seq == 1
    assert part.data == 5


def test_handler_exception_becomes_app_error_and_keeps_state() -> None:
    """A raising handler logs an APP_ERROR entry and leaves the state as it was."""
    part = make_part()
    part.execute(request_id=1, op="add", payload=b"5")
    failed = part.execute(request_id=2, op="boom", payload=b"")
    assert failed.status == ResponseStatus.APP_ERROR
    assert failed.result == b"ValueError"
    assert part.data == 5


def test_replay_re_executes_and_reports_divergence() -> None:
    """A replica re-runs the handler; a result differing from the primary's is flagged."""
    part = make_part()
    outcome = part.replay(entry(1))
    assert not outcome.diverged
    forged = LogEntry(seq=2, request_id=2, op="add", payload=b"1", status=0, result=b"999", epoch=1)
    assert part.replay(forged).diverged
    assert part.dedup.get(2) == forged


def test_replay_out_of_order_is_the_peers_fault() -> None:
    """An entry that skips a seq raises RemoteProtocolError."""
    part = make_part()
    with pytest.raises(RemoteProtocolError):
        part.replay(entry(2))


def test_snapshot_round_trip() -> None:
    """A snapshot installs state, position and dedup table on another holder."""
    source = make_part()
    for request_id in range(1, 6):
        source.execute(request_id=request_id, op="add", payload=b"3")
    target = make_part()
    target.install_snapshot(
        seq=source.applied_seq,
        seq_epoch=source.log.last_epoch,
        state=source.snapshot_state(),
        dedup=source.dedup.entries(),
    )
    assert target.data == 15
    assert target.applied_seq == 5
    assert target.log.first_seq == 6
    assert target.log.epoch_at(5) == 1
    assert target.dedup.get(3) == source.dedup.get(3)
    assert target.execute(request_id=9, op="add", payload=b"1").seq == 6


def test_snapshot_that_does_not_decode_is_the_peers_fault() -> None:
    """Garbage snapshot state raises RemoteProtocolError."""
    spec = PartSpec(handler=counter_handler, initial_state=lambda: 0, state_type=int)
    part = Part(ref=REF, spec=spec, epoch=1, log_entries_max=4, dedup_entries_max=4)
    with pytest.raises(RemoteProtocolError):
        part.install_snapshot(seq=1, seq_epoch=1, state=msgspec.msgpack.encode("text"), dedup=())


def test_log_bound_drops_oldest_and_keeps_base_epoch() -> None:
    """Beyond `entries_max` the oldest entry goes, and its epoch is still known."""
    log = PartLog(entries_max=3)
    for seq in range(1, 6):
        log.append(entry(seq, epoch=seq))
    assert len(log) == 3
    assert log.first_seq == 3
    assert log.epoch_at(2) == 2
    assert log.epoch_at(1) is None
    assert [item.seq for item in log.slice(4, 10)] == [4, 5]


def test_log_trim_and_slice() -> None:
    """Trimming forgets a prefix; slices start where asked and respect the count."""
    log = PartLog(entries_max=10)
    for seq in range(1, 8):
        log.append(entry(seq))
    log.trim_through(4)
    assert log.first_seq == 5
    assert [item.seq for item in log.slice(5, 2)] == [5, 6]
    assert log.slice(8, 5) == ()
    log.trim_through(7)
    assert log.first_seq == 8
    assert log.last_seq == 7


def test_dedup_evicts_oldest_seq_first() -> None:
    """The table keeps the newest `entries_max` request ids."""
    table = DedupTable(entries_max=2)
    for seq in range(1, 4):
        table.record(entry(seq, request_id=10 * seq))
    assert table.get(10) is None
    assert table.get(20) is not None
    assert [item.seq for item in table.entries()] == [2, 3]


def test_fenced_and_progress() -> None:
    """A fence above the epoch marks the part fenced; progress reports the role and position."""
    part = make_part()
    part.transition(PartTrigger.PLACED_AS_REPLICA)
    part.replay(entry(1))
    before = part.fenced
    part.fence_version = 4
    assert (before, part.fenced) == (False, True)
    progress = part.progress()
    assert progress is not None
    assert (progress.role, progress.applied_seq, progress.epoch) == (PartRole.REPLICA, 1, 1)


def test_reset_forgets_everything() -> None:
    """After a reset the part is empty and seqs start from 1 again."""
    part = make_part()
    part.execute(request_id=1, op="add", payload=b"5")
    part.reset()
    assert (part.data, part.applied_seq, len(part.dedup)) == (0, 0, 0)


def test_empty_logs_and_tables_stay_independent_of_each_other() -> None:
    """Empty logs and dedup tables share one empty container, and writing to one (after a
    trim to empty or a reset too) never shows up in another."""
    first, second = PartLog(entries_max=4), PartLog(entries_max=4)
    first.append(entry(1))
    assert (len(first), len(second), list(second.entries())) == (1, 0, [])
    first.trim_through(1)
    first.append(entry(2))
    second.append(entry(1))
    assert [item.seq for item in first.entries()] == [2]
    assert [item.seq for item in second.entries()] == [1]
    first.reset(last_seq=5, last_epoch=2)
    third = PartLog(entries_max=4)
    assert (len(first), first.last_epoch, len(third), third.last_seq) == (0, 2, 0, 0)
    tables = DedupTable(entries_max=4), DedupTable(entries_max=4)
    tables[0].record(entry(1, request_id=7))
    tables[0].replace(())
    tables[1].record(entry(1, request_id=8))
    assert (tables[0].get(7), tables[1].get(7), len(tables[1])) == (None, None, 1)


def test_a_fresh_part_holds_no_empty_containers_of_its_own() -> None:
    """Most parts on a server are placed and idle: one costs a few hundred bytes, not the
    kilobytes of an empty deque and OrderedDict each (docs/PERFORMANCE.md, memory)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        parts = [make_part() for _ in range(1000)]
        per_part_bytes = (tracemalloc.get_traced_memory()[0] - before) / len(parts)
    finally:
        tracemalloc.stop()
    assert per_part_bytes < 400, per_part_bytes


def test_logs_and_tables_keep_their_order_across_their_short_and_long_forms() -> None:
    """A log past SHORT_LOG_ENTRIES_MAX and a table past SHORT_DEDUP_ENTRIES_MAX change their
    container: slices, bounds, trims and oldest-first eviction give the same answers throughout."""
    count = SHORT_LOG_ENTRIES_MAX + SHORT_DEDUP_ENTRIES_MAX + 5
    log = PartLog(entries_max=count - 3)
    table = DedupTable(entries_max=count - 3)
    for seq in range(1, count + 1):
        log.append(entry(seq, epoch=seq))
        table.record(entry(seq, request_id=100 + seq))
        kept = list(range(max(1, seq - count + 4), seq + 1))
        assert [item.seq for item in log.entries()] == kept
        assert [item.seq for item in table.entries()] == [item.seq for item in log.entries()]
    assert (log.first_seq, log.epoch_at(3), table.get(103)) == (4, 3, None)
    assert table.get(104) == entry(4, request_id=104)
    assert [item.seq for item in log.slice(10, 3)] == [10, 11, 12]
    log.trim_through(count - 1)
    assert [item.seq for item in log.entries()] == [count]
    log.trim_through(count)
    log.append(entry(count + 1))
    assert (log.first_seq, log.last_seq, log.epoch_at(count)) == (count + 1, count + 1, count)
