"""The takeover benchmark runs end to end in quick mode, and its manager and survivor really take
over."""

from __future__ import annotations

import sys

import pytest
from benchmarks.bench_takeover import DEAD, SURVIVOR, Failover, ManagerFailover, main

from forehand.core._part import PartState
from forehand.core.messages import PartRef


def test_quick_takeover_benchmark_prints_the_rate_beside_the_bare_map_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench_takeover.py --quick` prints the manager's failover and the survivor's adoption
    rates beside the bare map work, and the seconds each takes."""
    monkeypatch.setattr(sys, "argv", ["bench_takeover.py", "--quick"])
    main()
    printed = capsys.readouterr().out
    assert "survivor: adoption (3,000 held" in printed
    assert "delta decode + apply + diff" in printed
    assert "manager: failover (" in printed
    assert "lookups + overrides + apply + diff + encode" in printed
    assert "the manager's failover, death to promotion published:" in printed
    assert "adoption of the failover's version:" in printed


def test_the_benchmarks_manager_promotes_every_part_of_the_dead_server() -> None:
    """What the manager's row times is a real failover: the silence declares the server dead,
    the survivors are fenced, and the committed version promotes every part it led to a
    survivor that held it, the version the survivor's row adopts."""
    failover = Failover(300)
    manager = ManagerFailover(failover)
    core, store = manager.manager()
    assert manager.promote(core, store) == len(failover.before)
    promoted = core.shard_map
    assert promoted is not None and promoted.version == failover.after.version
    for key in failover.before.parts_for(DEAD).primary:
        assert promoted.primary_of(key) in failover.before.lookup(key).replicas
        assert promoted.primary_of(key) != DEAD


def test_the_benchmarks_survivor_is_primary_of_the_parts_promoted_to_it() -> None:
    """What the benchmark times is a real takeover: after the failover's version, the survivor
    is PRIMARY of every part the version promotes to it, and the version is adopted."""
    failover = Failover(300)
    core = failover.survivor()
    assert failover.adopt(core) == len(failover.before)
    promoted = [
        key
        for key in failover.after.part_keys()
        if failover.before.primary_of(key) == DEAD and failover.after.primary_of(key) == SURVIVOR
    ]
    assert promoted
    for key in promoted:
        part = core.part(PartRef(session_id=key.session_id, part=key.part))
        assert part is not None and part.state is PartState.PRIMARY
