"""The election on a real etcd: one candidate wins, the next takes over when it resigns, a
revoked lease ends the term, and a term's fenced store stops writing once another leads."""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING

from forehand.runtime._leader import Election, ElectionConfig, LeaderRecord, read_leader
from forehand.stores import DeltaCommitRequested, DeltaCommitted, EtcdConfig, EtcdStore, StoreFailed
from forehand.stores._etcd import EtcdClient

if TYPE_CHECKING:
    from tests.etcd._members import EtcdMembers
    from tests.runtime._cluster import run_async
else:
    from _members import EtcdMembers

    from _cluster import run_async

TIMINGS = ElectionConfig(lease_ttl_s=2, step_down_margin_ms=400, watch_timeout_ms=500)


def _client(members: EtcdMembers, prefix: str) -> EtcdClient:
    return EtcdClient(EtcdConfig(endpoints=tuple(members.endpoints), prefix=prefix))


def test_one_candidate_wins_and_the_next_takes_over_when_it_resigns(
    shared_etcd: EtcdMembers,
) -> None:
    """Of two candidates exactly one leads and the leader key names it; the other waits, and
    leads once the first resigns."""
    prefix = f"/test-{secrets.token_hex(6)}"
    clients = [_client(shared_etcd, prefix) for _ in range(2)]
    first, second = (
        Election(client, node_id="manager", endpoint=f"127.0.0.1:{7000 + n}", config=TIMINGS)
        for n, client in enumerate(clients)
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        assert await first.campaign(stop)
        waiting = asyncio.create_task(second.campaign(stop))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        leader = read_leader(clients[0])
        assert leader is not None and leader.candidate_id == first.candidate_id
        assert first.value is not None and LeaderRecord.decode(first.value) == leader
        await first.resign()
        assert await asyncio.wait_for(waiting, 10)
        leader = read_leader(clients[0])
        assert leader is not None and leader.endpoint == "127.0.0.1:7001"
        await second.resign()
        assert read_leader(clients[0]) is None

    try:
        run_async(scenario())
    finally:
        for election in (first, second):
            election.close()
        for client in clients:
            client.close()


def test_a_revoked_lease_ends_the_term_and_fences_the_store(shared_etcd: EtcdMembers) -> None:
    """While a leader holds its lease, its fenced store commits; once the lease is revoked
    behind its back, `hold` reports the loss, and the store refuses to write for it even after
    another candidate won."""
    prefix = f"/test-{secrets.token_hex(6)}"
    clients = [_client(shared_etcd, prefix) for _ in range(2)]
    first, second = (
        Election(client, node_id="manager", endpoint=f"127.0.0.1:{7100 + n}", config=TIMINGS)
        for n, client in enumerate(clients)
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        assert await first.campaign(stop)
        assert first.value is not None
        store = EtcdStore(etcd=clients[0].config, leader_value=first.value)
        try:
            commit = DeltaCommitRequested(request_id=1, base_version=0, delta=b"d")
            assert isinstance(await asyncio.to_thread(store.execute, commit), DeltaCommitted)
            holding = asyncio.create_task(first.hold())
            record, _ = clients[1].get(clients[1].config.leader_key)
            assert record is not None
            clients[1].revoke(record["lease"])
            assert await asyncio.wait_for(holding, 10) == "etcd says the lease expired"
            assert await asyncio.wait_for(second.campaign(stop), 10)
            late = DeltaCommitRequested(request_id=2, base_version=1, delta=b"late")
            refused = await asyncio.to_thread(store.execute, late)
            assert isinstance(refused, StoreFailed) and store.deposed
        finally:
            store.close()
            await second.resign()

    try:
        run_async(scenario())
    finally:
        for election in (first, second):
            election.close()
        for client in clients:
            client.close()
