"""Tests of shedding a server's load busiest parts first (per-part load in load reports)."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

import pytest

from forehand.core._manager_events import HandoffStarted, RiskFlagged
from forehand.core._manager_risk import (
    PART_LOADS_PER_REPORT_MAX,
    GradedDrain,
    RiskDecision,
    busiest_first,
    parts_by_load,
)
from forehand.core.messages import LoadReport, PartLoad, PartRef
from forehand.errors import ConfigError
from forehand.predict import Action, RiskLevel
from forehand.wire import ReasonCode

if TYPE_CHECKING:
    from tests.core._manager_helpers import (
        ManagerHarness,
        complete_handoffs,
        decision,
        manager_config,
    )
else:
    from _manager_helpers import ManagerHarness, complete_handoffs, decision, manager_config

S = 1_000_000


def part(index: int) -> PartRef:
    return PartRef(session_id=index.to_bytes(16, "big"), part="cart")


def report(rates: dict[PartRef, float], count_max: int) -> tuple[PartLoad, ...]:
    """The busiest `count_max` parts of `rates`, as a server reports them."""
    busiest = sorted(rates.items(), key=lambda item: item[1], reverse=True)[:count_max]
    return tuple(PartLoad(ref=ref, requests_per_second=rate) for ref, rate in busiest)


def test_busiest_first_covers_the_load_with_fewer_parts_than_an_equal_share() -> None:
    """On a heavy-tailed (lognormal) server of 300 parts reporting its 64 busiest, shedding 30%
    of the load takes far fewer parts than 30% of the parts, and covers the 30%."""
    rng = random.Random(7)
    parts = [part(index) for index in range(300)]
    rates = {ref: rng.lognormvariate(-0.5, 1.0) for ref in parts}
    total = sum(rates.values())
    chosen = parts_by_load(
        parts,
        primaries=parts,
        part_loads=report(rates, 64),
        requests_per_second=total,
        load_share=0.3,
        count_max=len(parts),
        rng=random.Random(1),
    )
    equal_share = math.ceil(0.3 * len(parts))
    assert len(chosen) < equal_share / 2
    assert sum(rates[ref] for ref in chosen) >= 0.3 * total
    assert len(set(chosen)) == len(chosen)


def test_what_the_report_does_not_cover_is_made_up_at_the_average_unreported_rate() -> None:
    """10 primaries at 100 requests/s, two reported (40 and 10): shedding 70 takes both and
    ceil(20 / 6.25) = 4 of the eight unreported parts (50 requests/s between them)."""
    parts = [part(index) for index in range(10)]
    loads = (
        PartLoad(ref=parts[0], requests_per_second=40.0),
        PartLoad(ref=parts[1], requests_per_second=10.0),
    )
    chosen = parts_by_load(
        parts,
        primaries=parts,
        part_loads=loads,
        requests_per_second=100.0,
        load_share=0.7,
        count_max=10,
        rng=random.Random(1),
    )
    assert chosen[:2] == [parts[0], parts[1]]
    assert len(chosen) == 6 and set(chosen[2:]) <= set(parts[2:])


def test_stale_and_malformed_entries_are_skipped() -> None:
    """A reported part no longer free (moved, moving) is not chosen; NaN, infinite, negative
    and zero rates are ignored rather than trusted."""
    parts = [part(index) for index in range(6)]
    loads = (
        PartLoad(ref=part(99), requests_per_second=1_000.0),  # not on this server any more
        PartLoad(ref=parts[0], requests_per_second=math.nan),
        PartLoad(ref=parts[1], requests_per_second=math.inf),
        PartLoad(ref=parts[2], requests_per_second=-5.0),
        PartLoad(ref=parts[3], requests_per_second=0.0),
        PartLoad(ref=parts[4], requests_per_second=8.0),
    )
    chosen = parts_by_load(
        parts,
        primaries=parts,
        part_loads=loads,
        requests_per_second=10.0,
        load_share=0.05,
        count_max=6,
        rng=random.Random(1),
    )
    assert chosen == [parts[4]]


def test_a_reported_part_that_left_the_server_counts_toward_nothing() -> None:
    """10 primaries, one reported at 10 requests/s and nine at 2, and a part reported at 100 that
    has left since: shedding half of the 28 the server still carries takes the reported part and
    two others, where counting the part that left made it every part."""
    parts = [part(index) for index in range(10)]
    departed = part(99)
    loads = (
        PartLoad(ref=departed, requests_per_second=100.0),
        PartLoad(ref=parts[0], requests_per_second=10.0),
    )
    chosen = parts_by_load(
        parts,
        primaries=parts,
        part_loads=loads,
        requests_per_second=100.0 + 10.0 + 9 * 2.0,
        load_share=0.5,
        count_max=10,
        rng=random.Random(1),
    )
    # What is left: 28 requests/s, 14 to shed: the reported 10, then ceil(4 / 2) = 2 others.
    assert departed not in chosen
    assert chosen[0] == parts[0] and len(chosen) == 3


def test_the_selection_is_bounded_and_moves_at_least_one_part() -> None:
    """At most count_max parts whatever the share; at least one when any part is free, even
    with no rate known; at most PART_LOADS_PER_REPORT_MAX entries of a report are read."""
    parts = [part(index) for index in range(20)]
    loads = tuple(PartLoad(ref=ref, requests_per_second=1.0) for ref in parts)
    chosen = parts_by_load(
        parts,
        primaries=parts,
        part_loads=loads,
        requests_per_second=20.0,
        load_share=1.0,
        count_max=3,
        rng=random.Random(1),
    )
    assert len(chosen) == 3
    unknown = parts_by_load(
        parts,
        primaries=parts,
        part_loads=(),
        requests_per_second=0.0,
        load_share=0.5,
        count_max=5,
        rng=random.Random(1),
    )
    assert len(unknown) == 1
    many = [part(index) for index in range(PART_LOADS_PER_REPORT_MAX + 10)]
    flood = tuple(PartLoad(ref=ref, requests_per_second=1.0) for ref in many)
    flood += (PartLoad(ref=many[-1], requests_per_second=1e9),)
    picked = parts_by_load(
        many,
        primaries=many,
        part_loads=flood,
        requests_per_second=0.0,
        load_share=0.01,
        count_max=len(many),
        rng=random.Random(1),
    )
    assert many[-1] not in picked


def test_busiest_first_orders_reported_parts_ahead_of_the_rest() -> None:
    """A migration budget that keeps the first parts keeps the busiest ones."""
    parts = [part(index) for index in range(5)]
    loads = (
        PartLoad(ref=parts[3], requests_per_second=9.0),
        PartLoad(ref=parts[1], requests_per_second=4.0),
    )
    assert busiest_first(parts, loads) == [parts[3], parts[1], parts[0], parts[2], parts[4]]


def test_a_load_episode_sheds_load_and_a_fault_that_is_not_load_does_not() -> None:
    """The first step sized by excess CPU makes the episode shed load (busiest parts first); a
    server at risk under the CPU target, or an urgent risk that is not load, moves parts."""
    drain = GradedDrain(config=manager_config(risk_drain_unloaded_fraction=0.5))
    drain.observe("hot", cpu_utilization=0.95, now_us=0)
    drain.observe("hot", cpu_utilization=0.95, now_us=30 * S)
    drain.observe("lossy", cpu_utilization=0.3, now_us=0)
    drain.observe("lossy", cpu_utilization=0.3, now_us=30 * S)
    assert drain.step(decision(Action.DRAIN, server_id="hot")) > 0.0
    assert drain.step(decision(Action.DRAIN, server_id="lossy")) == 0.5
    assert drain.step(decision(Action.MOVE_NOW, RiskLevel.URGENT, server_id="evacuated")) == 1.0
    assert drain.sheds_load("hot")
    assert not drain.sheds_load("lossy") and not drain.sheds_load("evacuated")


def test_the_projection_span_and_its_cap_size_the_first_step() -> None:
    """A rising CPU projected over risk_drain_projection_ms sheds more than over the dwell, and
    never more than the cap risk_drain_projected_cpu_max allows."""
    shares = {}
    for name, overrides in (
        ("dwell", {}),
        ("far", {"risk_drain_projection_ms": 180_000}),
        ("capped", {"risk_drain_projection_ms": 3_600_000, "risk_drain_projected_cpu_max": 1.5}),
    ):
        drain = GradedDrain(config=manager_config(**overrides))
        for index, cpu in enumerate((0.6, 0.7, 0.8)):
            drain.observe("s1", cpu_utilization=cpu, now_us=index * 30 * S)
        shares[name] = drain.first_share("s1")
    assert shares["dwell"] < shares["far"]
    assert abs(shares["capped"] - (1.0 - 0.75 / 1.5)) < 1e-9
    with pytest.raises(ConfigError, match="risk_drain_projected_cpu_max must be at least"):
        manager_config(risk_drain_projected_cpu_max=0.5)


class _ShedHalfTheLoad:
    """A risk policy that asks once, at a CPU over 0.8, to shed half the server's load."""

    def __init__(self) -> None:
        self.decided = False

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> RiskDecision | None:
        if self.decided or load.cpu_utilization <= 0.8:
            return None
        self.decided = True
        return RiskDecision(
            reason=ReasonCode.OVERLOAD, parts_fraction=0.5, detail="test", sheds_load=True
        )

    def forget(self, server_id: str) -> None:
        """Nothing kept."""


def _report_hot(harness: ManagerHarness, rates: dict[PartRef, float]) -> list[RiskFlagged]:
    """s1 heartbeats hot with these part rates (its four busiest reported); the flags raised."""
    harness.loads["s1"] = LoadReport(
        cpu_utilization=0.95,
        queue_depth=4,
        latency_us_p99=1_000,
        error_ratio=0.0,
        requests_per_second=sum(rates.values()),
        part_loads=report(rates, 4),
    )
    harness.heartbeat("s1")
    harness.router.run()
    return harness.events(RiskFlagged)


def test_the_manager_moves_the_reported_busiest_part_to_shed_the_load() -> None:
    """A decision to shed half of s1's load, with s1 reporting one part carrying most of its
    requests, queues and hands off that part alone, not half of s1's primaries."""
    harness = ManagerHarness(risk_policy=_ShedHalfTheLoad())
    servers = ("s1", "s2", "s3", "s4")
    harness.join(*servers)
    harness.tick(200, alive=servers)
    for _ in range(24):
        harness.open_session()
    primaries = harness.primaries("s1")
    assert len(primaries) >= 4
    busy = primaries[len(primaries) // 2]
    rates = {ref: 1.0 for ref in primaries} | {busy: 10.0 * len(primaries)}
    (flagged,) = _report_hot(harness, rates)
    assert flagged.parts == 1
    started = harness.events(HandoffStarted)
    assert [ref for event in started for ref in event.parts] == [busy]


def test_the_manager_does_not_count_a_reported_part_that_moved_off_the_server() -> None:
    """s1's last report names a busy session's part that has moved to s2 since: shedding half
    of s1's load counts only what the map still places on s1 (about half its primaries, at
    the even rate of the rest), not the moved part's load (which made it all of them)."""
    harness = ManagerHarness(risk_policy=_ShedHalfTheLoad())
    servers = ("s1", "s2", "s3", "s4")
    harness.join(*servers)
    harness.tick(200, alive=servers)
    for _ in range(24):
        harness.open_session()
    before = harness.primaries("s1")
    busy = before[len(before) // 2]
    assert harness.manager.handoff(busy.session_id, target="s2", now_us=harness.router.now_us)
    complete_handoffs(harness, servers, 3)
    after = harness.primaries("s1")
    assert busy not in after and len(after) >= 6
    rates = {ref: 1.0 for ref in before} | {busy: 10.0 * len(before)}
    (flagged,) = _report_hot(harness, rates)
    assert 1 <= flagged.parts <= math.ceil(len(after) / 2) + 1 < len(after)
