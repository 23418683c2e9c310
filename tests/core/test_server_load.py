"""Tests of per-part load: the server's meter, its heartbeat report, and the field on the wire."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import msgspec

from forehand.core._server_load import RATE_SMOOTHING, PartLoadMeter
from forehand.core.messages import (
    HeartbeatReported,
    LoadReport,
    PartLoad,
    PartRef,
    decode_cluster_message,
    encode_cluster_message,
)
from forehand.wire import Redirect, ResponseStatus

if TYPE_CHECKING:
    from tests.core._server_helpers import MANAGER, OTHER_SESSION, Cluster, ref
else:
    from _server_helpers import MANAGER, OTHER_SESSION, Cluster, ref

S = 1_000_000


def part(index: int) -> PartRef:
    return PartRef(session_id=index.to_bytes(16, "big"), part="cart")


def test_the_meter_turns_counts_into_smoothed_rates_per_part() -> None:
    """Requests counted between two rolls become requests per second, smoothed (EWMA)."""
    meter = PartLoadMeter(parts_max=8)
    meter.roll(now_us=0)
    for _ in range(10):
        meter.record(part(1))
    meter.record(part(2))
    meter.roll(now_us=1 * S)
    assert meter.rate(part(1)) == RATE_SMOOTHING * 10.0
    assert meter.rate(part(2)) == RATE_SMOOTHING * 1.0
    meter.roll(now_us=2 * S)
    assert meter.rate(part(1)) == (1.0 - RATE_SMOOTHING) * RATE_SMOOTHING * 10.0


def test_the_busiest_parts_come_first_and_are_bounded() -> None:
    """`busiest` answers at most count_max eligible parts, busiest first."""
    meter = PartLoadMeter(parts_max=64)
    meter.roll(now_us=0)
    for index in range(20):
        for _ in range(index + 1):
            meter.record(part(index))
    meter.roll(now_us=1 * S)
    top = meter.busiest(5, eligible=lambda ref: ref != part(19))
    assert [load.ref for load in top] == [part(18), part(17), part(16), part(15), part(14)]
    rates = [load.requests_per_second for load in top]
    assert rates == sorted(rates, reverse=True)
    assert meter.busiest(0, eligible=lambda ref: True) == ()


def test_the_meter_tracks_at_most_parts_max_parts_and_forgets_quiet_ones() -> None:
    """Past parts_max tracked parts a new part is not counted (and counted as dropped); a part
    forgotten or gone quiet leaves the table."""
    meter = PartLoadMeter(parts_max=3)
    for index in range(5):
        meter.record(part(index))
    assert len(meter) == 3 and meter.dropped == 2
    meter.forget(part(0))
    assert len(meter) == 2
    meter.roll(now_us=0)
    meter.roll(now_us=1 * S)
    for second in range(2, 30):
        meter.roll(now_us=second * S)
    assert len(meter) == 0


def test_a_heartbeat_reports_the_busiest_primaries_up_to_the_bound() -> None:
    """A server counts the requests it serves per part and, every part_loads_interval_ms, its
    heartbeat's load report lists its busiest primaries, busiest first, at most
    heartbeat_part_loads_max of them, keeping the rest of the runtime's load sample as it was;
    heartbeats in between carry the same pick."""
    cluster = Cluster(heartbeat_part_loads_max=2, part_loads_interval_ms=1_000)
    for name in ("counter", "ledger"):
        cluster.place(name, "s1", "s2")
    cluster.place("counter", "s1", "s2", session=OTHER_SESSION)
    sample = LoadReport(
        cpu_utilization=0.5,
        queue_depth=1,
        latency_us_p99=900,
        error_ratio=0.0,
        requests_per_second=6.0,
    )
    cluster.server("s1").report_load(sample)
    cluster.router.advance(ms=0)
    for _ in range(3):
        cluster.request("s1", "ledger")
    cluster.request("s1", "counter")
    cluster.request("s1", "counter", session=OTHER_SESSION)
    cluster.request("s1", "counter", session=OTHER_SESSION)
    cluster.take(MANAGER, HeartbeatReported)
    cluster.router.advance(ms=500)
    (early,) = [b for b in cluster.take(MANAGER, HeartbeatReported) if b.server_id == "s1"]
    assert early.load.part_loads == ()
    cluster.router.advance(ms=500)
    (beat,) = [b for b in cluster.take(MANAGER, HeartbeatReported) if b.server_id == "s1"]
    loads = beat.load.part_loads
    assert [load.ref for load in loads] == [ref("ledger"), ref("counter", OTHER_SESSION)]
    assert loads[0].requests_per_second > loads[1].requests_per_second > 0.0
    assert msgspec.structs.replace(beat.load, part_loads=()) == sample
    replica = [b for b in cluster.take(MANAGER, HeartbeatReported) if b.server_id == "s2"]
    assert all(not beat.load.part_loads for beat in replica)
    cluster.router.advance(ms=500)
    (between,) = [b for b in cluster.take(MANAGER, HeartbeatReported) if b.server_id == "s1"]
    assert between.load.part_loads == loads


def test_part_loads_off_reports_none() -> None:
    """heartbeat_part_loads_max 0 leaves the runtime's load sample unchanged."""
    cluster = Cluster(heartbeat_part_loads_max=0)
    cluster.place("counter", "s1", "s2")
    cluster.router.advance(ms=0)
    cluster.request("s1", "counter")
    cluster.router.advance(ms=500)
    beats = [b for b in cluster.take(MANAGER, HeartbeatReported) if b.server_id == "s1"]
    assert beats and all(beat.load.part_loads == () for beat in beats)


def heartbeat(load: LoadReport) -> HeartbeatReported:
    return HeartbeatReported(
        server_id="s1", incarnation=1, sequence=1, map_version=1, load=load, parts=()
    )


def test_part_loads_round_trip_on_the_wire() -> None:
    """A load report with part loads encodes and decodes to the same heartbeat."""
    load = LoadReport(
        cpu_utilization=0.9,
        queue_depth=2,
        latency_us_p99=5_000,
        error_ratio=0.01,
        requests_per_second=40.0,
        part_loads=(
            PartLoad(ref=part(1), requests_per_second=30.0),
            PartLoad(ref=part(2), requests_per_second=2.5),
        ),
    )
    message = heartbeat(load)
    assert decode_cluster_message(encode_cluster_message(message)) == message


class _OldLoadReport(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """LoadReport as servers before part loads encoded it."""

    cpu_utilization: float
    queue_depth: int
    latency_us_p99: int
    error_ratio: float
    requests_per_second: float
    memory_utilization: float = 0.0
    io_bytes_per_second: float = 0.0
    loop_lag_us_p99: int = 0
    machine_cpu_utilization: float = 0.0


class _OldHeartbeat(msgspec.Struct, frozen=True, kw_only=True, tag="HeartbeatReported"):
    """HeartbeatReported carrying the old load report."""

    server_id: str
    incarnation: int
    sequence: int
    map_version: int
    load: _OldLoadReport
    parts: tuple[()]


def test_an_old_load_report_without_part_loads_still_decodes() -> None:
    """A heartbeat from a server that predates part loads decodes with none."""
    old = _OldHeartbeat(
        server_id="s1",
        incarnation=1,
        sequence=3,
        map_version=2,
        load=_OldLoadReport(
            cpu_utilization=0.4,
            queue_depth=0,
            latency_us_p99=1_000,
            error_ratio=0.0,
            requests_per_second=5.0,
            machine_cpu_utilization=0.5,
        ),
        parts=(),
    )
    decoded = decode_cluster_message(msgspec.msgpack.encode(old))
    assert isinstance(decoded, HeartbeatReported)
    assert decoded.load.part_loads == ()
    assert decoded.load.machine_cpu_utilization == 0.5 and decoded.sequence == 3


def test_the_meter_bound_holds_under_any_mix_of_records_forgets_and_rolls() -> None:
    """The tracked-part count the bound checks equals the parts with a count or a rate after
    any seeded sequence of records, forgets and rolls, so exactly parts_max parts are kept."""
    rng = random.Random(5)
    meter = PartLoadMeter(parts_max=6)
    counted: set[PartRef] = set()
    rolled = False
    for step in range(2_000):
        action = rng.random()
        ref = part(rng.randrange(12))
        if action < 0.75:
            before = meter.dropped
            meter.record(ref)
            if meter.dropped == before:
                counted.add(ref)
            else:
                assert ref not in counted and len(counted) == 6
        elif action < 0.9:
            meter.forget(ref)
            counted.discard(ref)
        else:
            meter.roll(now_us=step * S)
            if rolled:  # the first roll only starts the interval and keeps the counts
                counted = {ref for ref in counted if meter.rate(ref) > 0.0}
            rolled = True
        assert len(meter) == len(counted) <= 6


def test_the_meter_counts_offered_load_refusals_included_and_no_request_twice() -> None:
    """A write refused OVERLOADED (too many answers await replicas) counts toward its part's load:
    shedding moves the part's demand, refused or served. A retransmission answered from the
    dedup table and a request redirected for a stale map version do not (each is, or comes back
    as, a request counted once)."""
    cluster = Cluster(
        replicated_answers_max=2, heartbeat_part_loads_max=2, part_loads_interval_ms=1_000
    )
    cluster.place("ledger", "s1", "s2")
    cluster.place("counter", "s1", "s2")
    cluster.router.advance(ms=0)
    cluster.router.partition("s1", "s2")
    for _ in range(4):
        cluster.request("s1", "ledger")
    refused = [r for r in cluster.responses() if r.status is ResponseStatus.OVERLOADED]
    assert len(refused) == 2
    for _ in range(3):
        request_id = cluster.request("s1", "counter")
    cluster.request("s1", "counter", request_id=request_id)
    cluster.request("s1", "counter", map_version=1)
    assert cluster.take("c1", Redirect)
    cluster.take(MANAGER, HeartbeatReported)
    cluster.router.advance(ms=1_000)
    beats = [b for b in cluster.take(MANAGER, HeartbeatReported) if b.server_id == "s1"]
    rates = {load.ref: load.requests_per_second for load in beats[-1].load.part_loads}
    assert rates[ref("ledger")] == RATE_SMOOTHING * 4
    assert rates[ref("counter")] == RATE_SMOOTHING * 3
