"""Tests of the client's state tables (connections, part routes), its pool and its config."""

from __future__ import annotations

import random

import pytest

from forehand.core._client_config import ClientConfig
from forehand.core._client_session import (
    ROUTE_TRANSITIONS,
    PartRoute,
    RouteState,
    RouteTrigger,
    route_transition_table,
)
from forehand.core._pool import (
    CONNECTION_TRANSITIONS,
    Connection,
    ConnectionPool,
    ConnectionState,
    ConnectionTrigger,
    PathStats,
    connection_transition_table,
)
from forehand.errors import ConfigError, LocalProtocolError


def test_connection_table_rows_match_the_mapping() -> None:
    """connection_transition_table lists every legal transition once, as (from, trigger, to)."""
    rows = connection_transition_table()
    assert len(rows) == len(CONNECTION_TRANSITIONS)
    assert all(
        CONNECTION_TRANSITIONS[(source, trigger)] is target for source, trigger, target in rows
    )


def test_every_missing_connection_transition_raises() -> None:
    """Each (state, trigger) pair absent from the table raises LocalProtocolError."""
    for state in ConnectionState:
        for trigger in ConnectionTrigger:
            connection = Connection("s1", now_us=0, queue_frames_max=1)
            connection.state = state
            if (state, trigger) in CONNECTION_TRANSITIONS:
                assert connection.fire(trigger) is CONNECTION_TRANSITIONS[(state, trigger)]
            else:
                with pytest.raises(LocalProtocolError):
                    connection.fire(trigger)


def test_closed_connection_accepts_nothing_but_a_new_hello() -> None:
    """CLOSED is terminal for a connection except for a fresh HELLO."""
    closed = [
        trigger for (state, trigger) in CONNECTION_TRANSITIONS if state is ConnectionState.CLOSED
    ]
    assert closed == [ConnectionTrigger.HELLO_SENT]


def test_route_table_rows_match_the_mapping() -> None:
    """route_transition_table lists every legal route transition once."""
    rows = route_transition_table()
    assert len(rows) == len(ROUTE_TRANSITIONS)
    assert all(ROUTE_TRANSITIONS[(source, trigger)] is target for source, trigger, target in rows)


def test_every_missing_route_transition_raises() -> None:
    """Each (state, trigger) pair absent from the route table raises LocalProtocolError."""
    for state in RouteState:
        for trigger in RouteTrigger:
            route = PartRoute("auth", primary="s1", backups=(), map_version=1)
            route.state = state
            if (state, trigger) in ROUTE_TRANSITIONS:
                assert route.fire(trigger) is ROUTE_TRANSITIONS[(state, trigger)]
            else:
                with pytest.raises(LocalProtocolError):
                    route.fire(trigger)


def test_closed_route_is_terminal_and_every_state_can_close() -> None:
    """No transition leaves CLOSED, and every other state closes on SESSION_CLOSED."""
    assert not [key for key in ROUTE_TRANSITIONS if key[0] is RouteState.CLOSED]
    for state in RouteState:
        if state is not RouteState.CLOSED:
            assert ROUTE_TRANSITIONS[(state, RouteTrigger.SESSION_CLOSED)] is RouteState.CLOSED


def test_route_adopt_never_goes_back_and_drops_primary_from_backups() -> None:
    """adopt takes newer placements only and keeps the primary out of the backups."""
    route = PartRoute("auth", primary="s1", backups=("s2",), map_version=4)
    route.adopt(primary="s2", backups=("s1", "s2", "s3"), map_version=5)
    assert route.servers() == ("s2", "s1", "s3")
    with pytest.raises(AssertionError):
        route.adopt(primary="s1", backups=(), map_version=4)


def test_pool_bound_and_queue_bound() -> None:
    """The pool refuses connections past connections_max; a connection queues at most its bound."""
    pool = ConnectionPool(connections_max=2, queue_frames_max=2, rtt_samples_max=4, paths_max=2)
    first = pool.open("s1", now_us=0)
    assert first is not None and first.state is ConnectionState.CONNECTING
    assert pool.open("s2", now_us=0) is not None
    assert pool.open("s3", now_us=0) is None
    assert first.enqueue("a") and first.enqueue("b") and not first.enqueue("c")
    closed = pool.close("s1", ConnectionTrigger.LOST)
    assert closed is first and closed.state is ConnectionState.CLOSED
    assert pool.get("s1") is None
    assert pool.open("s3", now_us=0) is not None
    for server in ("s1", "s2", "s3"):
        pool.path(server).add(1)
    assert list(pool.paths()) == ["s2", "s3"]


def test_path_stats_smooth_rtt_like_rfc_6298() -> None:
    """The first sample sets srtt and rttvar = rtt/2; later ones move srtt by 1/8 of the error."""
    stats = PathStats(samples_max=2)
    stats.add(8_000)
    assert (stats.srtt_us, stats.rttvar_us) == (8_000, 4_000)
    stats.add(16_000)
    assert (stats.srtt_us, stats.rttvar_us) == (9_000, 5_000)
    stats.add(8_000)
    assert list(stats.samples_us) == [16_000, 8_000]


def test_config_defaults_are_valid_and_randomized_configs_too() -> None:
    """The default config validates, and so does every config randomized from a seed."""
    ClientConfig()
    for seed in range(50):
        config = ClientConfig.randomized(random.Random(seed), node_id=f"c{seed}")
        assert config.node_id == f"c{seed}"
        assert config.retry_backoff_ms <= config.retry_backoff_max_ms


@pytest.mark.parametrize(
    "overrides",
    [
        {"inflight_requests_max": 0},
        {"request_timeout_ms": -1},
        {"retry_jitter_ratio": 1.0},
        {"retry_backoff_ms": 100, "retry_backoff_max_ms": 10},
        {"node_id": "manager"},
        {"node_id": ""},
        {"hello_credentials_max": 1025},
        {"unanswered_ids_max": 1025},
        {"ping_interval_ms": 1.5},
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, object]) -> None:
    """Non-positive bounds, bad ratios, inverted backoffs and over-wire bounds raise ConfigError."""
    with pytest.raises(ConfigError):
        ClientConfig(**overrides)  # type: ignore[arg-type]
