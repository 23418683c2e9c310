"""Clients probe potential targets and report paths in PING; servers keep the reports per client
bucket and send them to the manager in bounded, rotating heartbeat batches."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forehand.core._paths import PathTable, client_bucket, path_report
from forehand.core._pool import TransportCounters
from forehand.core._server_config import ServerConfig
from forehand.core.messages import HeartbeatReported, PathReport
from forehand.core.server import ServerCore
from forehand.errors import ConfigError
from forehand.wire import PROTOCOL_VERSION, Hello, PathSample, Ping, Pong

if TYPE_CHECKING:
    from tests.core._client_helpers import Harness, placement
    from tests.core._server_helpers import SPECS, sealer
else:
    from _client_helpers import Harness, placement
    from _server_helpers import SPECS, sealer

INTERVAL_MS = 100


def _server(**overrides: Any) -> ServerCore:
    config = replace(ServerConfig(server_id="s1", heartbeat_interval_ms=INTERVAL_MS), **overrides)
    return ServerCore(config=config, parts=SPECS, sealer=sealer(), rng=random.Random(3))


def _hello(core: ServerCore, source: str, client_id: bytes, now_us: int) -> None:
    hello = Hello(versions=(PROTOCOL_VERSION,), client_id=client_id)
    core.receive_message(hello, source=source, now_us=now_us)


def _heartbeat_paths(core: ServerCore, now_us: int) -> tuple[PathReport, ...]:
    core.handle_timer(now_us=now_us)
    beats = [o.message for o in core.messages_to_send() if type(o.message) is HeartbeatReported]
    assert len(beats) == 1, beats
    return beats[0].paths


def _samples(count: int) -> tuple[PathSample, ...]:
    return tuple(PathSample(f"s{n}", rtt_us=1000 + n) for n in range(count))


def test_ping_samples_become_reports_of_the_clients_bucket() -> None:
    """Each sample of a client's PING is reported with the client's bucket, units converted."""
    core = _server(path_buckets_max=16)
    _hello(core, "~client-1", b"c" * 16, now_us=1)
    sample = PathSample(
        "s2",
        rtt_us=9000,
        jitter_us=300,
        loss_ppm=25_000,
        throughput_bps=8_000,
        rtt_min_us=8000,
        retransmissions=3,
        probe=True,
    )
    core.receive_message(
        Ping(sequence=1, sent_us=5, telemetry=(sample,)), source="~client-1", now_us=2
    )
    assert any(type(o.message) is Pong for o in core.messages_to_send())
    (report,) = _heartbeat_paths(core, now_us=3)
    assert report == PathReport(
        client_bucket=client_bucket(b"c" * 16, buckets=16),
        server_id="s2",
        rtt_us=9000,
        rtt_us_min=8000,
        jitter_us=300,
        loss_ratio=0.025,
        retransmissions=3,
        throughput_bytes_per_second=1000.0,
        probe=True,
    )


def test_heartbeat_batches_are_bounded_and_rotate_over_every_path() -> None:
    """With more paths than `heartbeat_paths_max`, each heartbeat carries at most that many and
    successive heartbeats cover every path."""
    core = _server(heartbeat_paths_max=3, path_buckets_max=1)
    _hello(core, "~client-1", b"a" * 16, now_us=1)
    core.receive_message(
        Ping(sequence=1, sent_us=1, telemetry=_samples(7)), source="~client-1", now_us=2
    )
    seen: list[str] = []
    now_us = 2
    for _ in range(3):
        batch = _heartbeat_paths(core, now_us)
        assert 1 <= len(batch) <= 3
        seen.extend(report.server_id for report in batch)
        now_us += INTERVAL_MS * 1000
    assert sorted(set(seen)) == [f"s{n}" for n in range(7)]
    assert len(seen) == 9  # 3 + 3 + 3: the third batch wraps around to the first paths


def test_reports_are_bounded_and_the_stalest_expire() -> None:
    """The table keeps at most `path_reports_max` paths, and none older than the TTL."""
    core = _server(path_reports_max=4, path_report_ttl_ms=1000, heartbeat_paths_max=64)
    _hello(core, "~client-1", b"a" * 16, now_us=1)
    core.receive_message(
        Ping(sequence=1, sent_us=1, telemetry=_samples(6)), source="~client-1", now_us=2
    )
    batch = _heartbeat_paths(core, now_us=3)
    assert [report.server_id for report in batch] == ["s2", "s3", "s4", "s5"]
    late_us = 2 + 1000 * 1000 + INTERVAL_MS * 1000
    assert _heartbeat_paths(core, now_us=late_us) == ()


def test_pings_of_unknown_sources_and_samples_without_rtt_are_not_reported() -> None:
    """A PING from a peer that sent no HELLO, or a sample without an RTT, adds nothing."""
    core = _server()
    core.receive_message(Ping(sequence=1, sent_us=1, telemetry=_samples(2)), source="s9", now_us=1)
    _hello(core, "~client-1", b"a" * 16, now_us=1)
    core.receive_message(
        Ping(sequence=1, sent_us=1, telemetry=(PathSample("s2"),)), source="~client-1", now_us=2
    )
    assert _heartbeat_paths(core, now_us=3) == ()


def test_two_clients_of_one_bucket_share_one_entry_per_server() -> None:
    """Reports aggregate per (bucket, server): a second client of the same bucket replaces it."""
    table = PathTable(reports_max=8, ttl_ms=1000)
    first = path_report(PathSample("s2", rtt_us=100), client_bucket=0)
    second = path_report(PathSample("s2", rtt_us=200), client_bucket=0)
    assert first is not None and second is not None
    table.record(first, now_us=1)
    table.record(second, now_us=2)
    assert table.batch(count_max=8, now_us=3) == (second,)


def test_client_bucket_is_stable_and_bounded() -> None:
    """The bucket depends only on the client id and the bucket count (the same on every server)."""
    ids = [bytes([n]) * 16 for n in range(200)]
    buckets = [client_bucket(client_id, buckets=7) for client_id in ids]
    assert all(0 <= bucket < 7 for bucket in buckets)
    assert len(set(buckets)) == 7
    assert buckets == [client_bucket(client_id, buckets=7) for client_id in ids]


def test_path_bounds_must_be_positive() -> None:
    """A zero bound is a configuration error, not a silent "keep nothing"."""
    with pytest.raises(ConfigError):
        ServerConfig(server_id="s1", path_buckets_max=0)


# Clients: probes of potential targets, and what their PINGs report.


def _probing_harness(**overrides: Any) -> Harness:
    harness = Harness(prewarm_probe_targets=True, **overrides)
    harness.open(placement("cart", "s1", "s2"))
    return harness


def _answer_pings(harness: Harness, server: str, rtt_us: int) -> list[Ping]:
    """Answer every PING sent to `server` after `rtt_us`; return them."""
    pings = harness.take(Ping, server)
    for ping in pings:
        harness.advance(us=rtt_us)
        harness.feed(server, Pong(sequence=ping.sequence, sent_us=ping.sent_us))
    return pings


def test_client_prewarms_and_probes_the_backup_of_its_part() -> None:
    """The backup a handoff would move the part to gets a connection and probe PINGs at the
    probe interval; the PINGs report that path as a probe."""
    harness = _probing_harness(probe_interval_ms=5_000, ping_interval_ms=1_000)
    harness.advance(ms=1)
    assert len(harness.take(Hello, "s2")) == 1
    assert harness.take(Hello, "s1") == []  # The primary is connected by the first call.
    harness.welcome("s2")
    pings: list[Ping] = []
    for _ in range(20):
        harness.advance(ms=1_000)
        pings.extend(_answer_pings(harness, "s2", rtt_us=700))
    assert 3 <= len(pings) <= 5  # one per 5 s (the first after ping_interval_ms), not one per s
    (sample,) = pings[-1].telemetry
    assert sample.server_id == "s2" and sample.probe is True
    assert sample.rtt_us is not None and sample.rtt_min_us == 700


def test_probe_pings_are_bounded_per_second() -> None:
    """Many potential targets share `probes_per_second_max` probe PINGs per second."""
    harness = Harness(
        prewarm_probe_targets=True,
        probe_interval_ms=1_000,
        probes_per_second_max=2,
        probe_targets_max=6,
    )
    backups = [f"b{n}" for n in range(6)]
    harness.open(placement("cart", "s1", *backups))
    harness.advance(ms=1)
    for backup in backups:
        assert len(harness.take(Hello, backup)) == 1
        harness.welcome(backup)
    counts = []
    for _ in range(10):
        harness.advance(ms=1_000)
        counts.append(sum(len(harness.take(Ping, backup)) for backup in backups))
    assert max(counts) <= 2
    assert sum(counts) >= 15  # the budget is used, not starved


def test_probe_targets_are_bounded() -> None:
    """At most `probe_targets_max` backups are connected for probing."""
    harness = Harness(prewarm_probe_targets=True, probe_targets_max=2)
    harness.open(placement("cart", "s1", "b1", "b2", "b3", "b4"))
    harness.advance(ms=1)
    assert len(harness.take(Hello)) == 2


def test_transport_counters_become_loss_retransmissions_and_throughput() -> None:
    """Two readings of the transport counters give the path's rates, reported in PING."""
    harness = _probing_harness()
    harness.advance(ms=1)
    harness.welcome("s2")
    first = TransportCounters(
        packets_sent_count=100, packets_lost_count=1, packets_retransmitted_count=2, bytes_count=0
    )
    second = TransportCounters(
        packets_sent_count=300,
        packets_lost_count=11,
        packets_retransmitted_count=14,
        bytes_count=500_000,
    )
    harness.client.record_transport_counters("s2", first, now_us=harness.now_us)
    harness.client.record_transport_counters("s2", second, now_us=harness.now_us + 2_000_000)
    harness.advance(ms=1_000)
    _answer_pings(harness, "s2", rtt_us=900)
    harness.advance(ms=5_000)
    (ping,) = harness.take(Ping, "s2")
    (sample,) = ping.telemetry
    assert sample.loss_ppm == 50_000  # 10 lost of 200 sent
    assert sample.retransmissions == 12
    assert sample.throughput_bps == 2_000_000  # 500 kB in 2 s, in bits
    stats = harness.client.path_stats()["s2"]
    restarted = TransportCounters(
        packets_sent_count=5, packets_lost_count=0, packets_retransmitted_count=0, bytes_count=9
    )
    harness.client.record_transport_counters("s2", restarted, now_us=harness.now_us)
    assert stats.loss_ratio == 0.05  # a new connection's counters start a new interval


def test_probing_is_off_unless_asked() -> None:
    """Without `prewarm_probe_targets` the client connects to no backup by itself."""
    harness = Harness()
    harness.open(placement("cart", "s1", "s2"))
    harness.advance(ms=60_000)
    assert harness.take(Hello, "s2") == []


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.tuples(st.integers(0, 7), st.sampled_from("abcdef")), max_size=60),
    reports_max=st.integers(1, 20),
    count_max=st.integers(1, 8),
)
def test_path_table_stays_bounded_and_its_batches_cover_every_path(
    keys: list[tuple[int, str]], reports_max: int, count_max: int
) -> None:
    """Whatever is recorded, the table holds at most `reports_max` paths, each batch at most
    `count_max`, and ceil(paths / count_max) successive batches cover every path kept."""
    table = PathTable(reports_max=reports_max, ttl_ms=1_000_000)
    for now_us, (bucket, server) in enumerate(keys, start=1):
        report = path_report(PathSample(server, rtt_us=now_us), client_bucket=bucket)
        assert report is not None
        table.record(report, now_us=now_us)
        assert len(table) <= reports_max
    kept = len(table)
    seen: set[tuple[int, str]] = set()
    for _ in range(-(-kept // count_max)):
        batch = table.batch(count_max=count_max, now_us=len(keys) + 1)
        assert len(batch) <= count_max
        seen.update((report.client_bucket, report.server_id) for report in batch)
    assert len(seen) == kept
