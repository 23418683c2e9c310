"""Seeded churn: requests, retries and back-to-back handoffs between servers keep the guarantees."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from forehand.core._part import PartState
from forehand.core._server_events import (
    PrimaryAcceptedWrite,
    RequestExecuted,
    WriteAcknowledged,
)
from forehand.core.messages import HandoffAborted, PartRef, PartRole, PositionsReported
from forehand.placement import PartKey, Placement
from forehand.wire import Redirect, ResponseStatus

if TYPE_CHECKING:
    from tests.core._server_helpers import MANAGER, OTHER_SESSION, SESSION, Cluster
else:
    from _server_helpers import MANAGER, OTHER_SESSION, SESSION, Cluster

SERVERS = ("s1", "s2", "s3")
PARTS = ((SESSION, "counter"), (SESSION, "ledger"), (OTHER_SESSION, "counter"))
STEPS = 300


class Workload:
    """A client that retries until answered, and a manager that moves parts around."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.cluster = Cluster(seed=seed, backup_period_ms=self.rng.randint(50, 400))
        for session, part in PARTS:
            self.cluster.place(part, "s1", "s2", "s3", session=session)
        self.pending: dict[int, tuple[bytes, str]] = {}
        self.answered: dict[int, bytes] = {}
        self.next_id = 1
        self.handoff_id = 100

    def step(self) -> None:
        """One random action."""
        action = self.rng.random()
        if action < 0.45:
            self.send_new()
        elif action < 0.7:
            self.retry()
        elif action < 0.8:
            self.hand_off()
        else:
            self.cluster.router.advance(ms=self.rng.randint(1, 120))
        self.collect()
        self.react()

    def react(self) -> None:
        """What the manager does between steps: nothing here."""

    def primary(self, session: bytes, part: str) -> str:
        """Where the manager's map says the part lives."""
        return self.cluster.map.lookup(PartKey(session_id=session, part=part)).primary

    def send(self, request_id: int, server: str | None = None) -> None:
        """Send one request to `server` (a random one when None: stale clients exist)."""
        session, part = self.pending[request_id]
        target = server or self.rng.choice([self.primary(session, part), *SERVERS])
        stale = self.rng.random() < 0.2
        version = self.rng.randint(1, self.cluster.map.version) if stale else None
        self.cluster.request(
            target, part, session=session, request_id=request_id, map_version=version
        )

    def send_new(self) -> None:
        """A new request on a random part."""
        request_id = self.next_id
        self.next_id += 1
        self.pending[request_id] = self.rng.choice(PARTS)
        self.send(request_id)

    def retry(self) -> None:
        """Re-send an unanswered (or answered: a duplicate) request id."""
        candidates = sorted(self.pending) or sorted(self.answered)
        if candidates:
            request_id = self.rng.choice(candidates)
            if request_id in self.pending:
                self.send(request_id)

    def hand_off(self) -> None:
        """Move a random settled part from its primary to another server."""
        session, part = self.rng.choice(PARTS)
        ref = PartRef(session_id=session, part=part)
        source = self.primary(session, part)
        if not self.settled(ref, source):
            return
        target = self.rng.choice([server for server in SERVERS if server != source])
        replicas = tuple(server for server in SERVERS if server != target)
        key = PartKey(session_id=session, part=part)
        move = self.cluster.map.override_placement(
            key, Placement(primary=target, replicas=replicas)
        )
        self.cluster.publish(*move.operations)
        self.handoff_id += 1
        self.cluster.assign_handoff([ref], source=source, target=target, handoff_id=self.handoff_id)

    def quiet(self) -> bool:
        """Every part is settled on the primary the map names."""
        return all(
            self.settled(PartRef(session_id=session, part=part), self.primary(session, part))
            for session, part in PARTS
        )

    def settled(self, ref: PartRef, primary: str) -> bool:
        """The part is PRIMARY on `primary` and no server is still moving it."""
        for server in SERVERS:
            held = self.cluster.server(server).part(ref)
            state = None if held is None else held.state
            if server == primary and state is not PartState.PRIMARY:
                return False
            if state in (PartState.HANDING_OFF, PartState.RECEIVING, PartState.ABORTING):
                return False
        return True

    def collect(self) -> None:
        """Read answers: OK settles a request, REDIRECT re-sends to the named target."""
        for response in self.cluster.responses():
            if response.status is ResponseStatus.OK and response.request_id in self.pending:
                del self.pending[response.request_id]
                self.answered[response.request_id] = response.payload
        for redirect in self.cluster.take("c1", Redirect):
            if redirect.request_id in self.pending:
                self.send(redirect.request_id, redirect.targets[0].server_id)

    def finish(self) -> None:
        """Let every handoff end and answer every pending request."""
        for _ in range(40):
            self.cluster.router.advance(ms=200)
            for request_id in sorted(self.pending):
                session, part = self.pending[request_id]
                self.send(request_id, self.primary(session, part))
            self.collect()
            self.react()
            if not self.pending and self.quiet():
                break
        self.cluster.router.advance(ms=1000)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_churn_keeps_exactly_once_order_and_convergence(seed: int) -> None:
    """No request is lost or run twice, one writer per epoch, replicas converge, per seed."""
    workload = Workload(seed)
    for _ in range(STEPS):
        workload.step()
    workload.finish()
    cluster = workload.cluster
    assert not workload.pending
    executed: dict[tuple[PartRef, int], str] = {}
    for node, event in cluster.router.all_events(RequestExecuted):
        if event.log_index is None:
            continue
        key = (event.ref, event.request_id)
        assert key not in executed, f"{key} executed by {executed[key]} and {node}"
        executed[key] = node
    writers: dict[tuple[PartRef, int], str] = {}
    for node, accepted in cluster.router.all_events(PrimaryAcceptedWrite):
        assert writers.setdefault((accepted.ref, accepted.map_version), node) == node
    acknowledged = {(e.ref, e.request_id) for _, e in cluster.router.all_events(WriteAcknowledged)}
    assert acknowledged <= set(executed)
    for session, part in PARTS:
        ref = PartRef(session_id=session, part=part)
        primary = cluster.server(workload.primary(session, part)).part(ref)
        assert primary is not None and primary.state is PartState.PRIMARY
        writes = sum(1 for key in executed if key[0] == ref)
        assert primary.data == writes == primary.applied_seq
        for server in SERVERS:
            held = cluster.server(server).part(ref)
            assert held is not None and (held.data, held.applied_seq) == (writes, writes)
    assert len(workload.answered) == workload.next_id - 1


class FaultyWorkload(Workload):
    """The churn with lost messages; the manager settles aborted handoffs by position."""

    def __init__(self, seed: int, *, loss_probability: float) -> None:
        super().__init__(seed)
        self.loss_probability = loss_probability
        self.handoffs: dict[int, tuple[PartRef, str, str]] = {}
        self.cluster.router.filters.append(self.lose)

    def lose(self, source: str, destination: str, message: object) -> bool:
        """Drop a message at random, except on manager links (the fake manager never retries)."""
        if MANAGER in (source, destination):
            return False
        return self.rng.random() < self.loss_probability

    def hand_off(self) -> None:
        """As in the base workload, remembering each handoff to settle its abort."""
        before = self.handoff_id
        session, part = self.rng.choice(PARTS)
        ref = PartRef(session_id=session, part=part)
        source = self.primary(session, part)
        if not self.settled(ref, source):
            return
        target = self.rng.choice([server for server in SERVERS if server != source])
        self.move(ref, target)
        self.handoff_id = before + 1
        self.handoffs[self.handoff_id] = (ref, source, target)
        self.cluster.assign_handoff([ref], source=source, target=target, handoff_id=self.handoff_id)

    def move(self, ref: PartRef, primary: str) -> None:
        """Pin `ref` on `primary`, the other servers as replicas."""
        replicas = tuple(server for server in SERVERS if server != primary)
        key = PartKey(session_id=ref.session_id, part=ref.part)
        move = self.cluster.map.override_placement(
            key, Placement(primary=primary, replicas=replicas)
        )
        self.cluster.publish(*move.operations)

    def react(self) -> None:
        """The manager settles every aborted handoff."""
        for aborted in self.cluster.take(MANAGER, HandoffAborted):
            if aborted.handoff_id in self.handoffs:
                self.settle(*self.handoffs.pop(aborted.handoff_id))
        self.cluster.take(MANAGER, PositionsReported)

    def settle(self, ref: PartRef, source: str, target: str) -> None:
        """Fence both sides, then keep whichever holds the longer log (the target on a tie when
        it took over): a blind revert could drop writes the target already acknowledged."""
        self.cluster.prepare_failover([ref], to=[source, target])
        best: tuple[int, int, str] | None = None
        for report in self.cluster.take(MANAGER, PositionsReported):
            for progress in report.parts:
                took_over = int(progress.role is PartRole.PRIMARY)
                rank = (progress.applied_seq, took_over, report.server_id)
                best = rank if best is None or rank[:2] > best[:2] else best
        self.move(ref, source if best is None else best[2])


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_churn_with_lost_messages_loses_no_acknowledged_write(seed: int) -> None:
    """With 5% of messages lost and aborts settled by position, nothing acknowledged is lost."""
    workload = FaultyWorkload(seed, loss_probability=0.05)
    for _ in range(STEPS):
        workload.step()
    workload.cluster.router.filters.clear()
    workload.finish()
    cluster = workload.cluster
    assert not workload.pending
    writers: dict[tuple[PartRef, int], str] = {}
    for node, accepted in cluster.router.all_events(PrimaryAcceptedWrite):
        assert writers.setdefault((accepted.ref, accepted.map_version), node) == node
    acknowledged = [
        (e.ref, e.request_id)
        for _, e in cluster.router.all_events(WriteAcknowledged)
        if e.client_facing
    ]
    for session, part in PARTS:
        ref = PartRef(session_id=session, part=part)
        primary = cluster.server(workload.primary(session, part)).part(ref)
        assert primary is not None and primary.state is PartState.PRIMARY
        assert primary.data == primary.applied_seq == len(primary.dedup)
        held = {entry.request_id for entry in primary.dedup.entries()}
        assert {request_id for key, request_id in acknowledged if key == ref} <= held
        for server in SERVERS:
            copy = cluster.server(server).part(ref)
            assert copy is not None and copy.data == primary.data


class CrashyWorkload(FaultyWorkload):
    """The churn with crashes and restarts; the manager fails parts over by position."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed, loss_probability=0.02)
        self.dead: dict[str, int] = {}
        self.incarnations = dict.fromkeys(SERVERS, 1)

    def step(self) -> None:
        """Sometimes crash or restart a server, else a base step."""
        roll = self.rng.random()
        if roll < 0.03 and not self.dead and self.healthy():
            self.crash(self.rng.choice(SERVERS))
        elif roll < 0.06 and self.dead:
            self.restart(self.rng.choice(sorted(self.dead)))
        else:
            super().step()

    def healthy(self) -> bool:
        """Every server holds every part as far as its primary: one crash then loses nothing
        acknowledged (two crashes before a restarted server caught up may lose anything)."""
        for session, part in PARTS:
            ref = PartRef(session_id=session, part=part)
            primary = self.cluster.server(self.primary(session, part)).part(ref)
            if primary is None or primary.state is not PartState.PRIMARY:
                return False
            for server in SERVERS:
                copy = self.cluster.server(server).part(ref)
                if copy is None or copy.applied_seq != primary.applied_seq:
                    return False
        return True

    def settled(self, ref: PartRef, primary: str) -> bool:
        """Hand off only between live servers."""
        return not self.dead and super().settled(ref, primary)

    def send(self, request_id: int, server: str | None = None) -> None:
        """Requests to dead servers are lost (the client retries later)."""
        super().send(request_id, server)

    def crash(self, server: str) -> None:
        """Kill `server`; the manager fails over what it was primary of or moving."""
        self.cluster.router.remove(server)
        self.dead[server] = self.cluster.router.now_us
        for peer in [*SERVERS, "c1"]:
            if peer != server:
                self.cluster.router.disconnect(server, peer)
        for session, part in PARTS:
            ref = PartRef(session_id=session, part=part)
            moving = any(
                source == server and not super(CrashyWorkload, self).settled(ref, target)
                for handoff_ref, source, target in self.handoffs.values()
                if handoff_ref == ref
            )
            if self.primary(session, part) == server or moving:
                self.fail_over(ref)

    def fail_over(self, ref: PartRef) -> None:
        """Fence every live holder and promote the one with the longest log."""
        live = [server for server in SERVERS if server not in self.dead]
        self.cluster.prepare_failover([ref], to=live)
        best: tuple[int, str] | None = None
        for report in self.cluster.take(MANAGER, PositionsReported):
            for progress in report.parts:
                rank = (progress.applied_seq, report.server_id)
                best = rank if best is None or rank[0] > best[0] else best
        self.move(ref, live[0] if best is None else best[1])

    def react(self) -> None:
        """Settle aborts among live servers only."""
        for aborted in self.cluster.take(MANAGER, HandoffAborted):
            if aborted.handoff_id in self.handoffs:
                ref, source, target = self.handoffs.pop(aborted.handoff_id)
                if source in self.dead or target in self.dead:
                    self.fail_over(ref)
                else:
                    self.settle(ref, source, target)
        self.cluster.take(MANAGER, PositionsReported)

    def restart(self, server: str) -> None:
        """Start `server` again, empty, with a new incarnation."""
        del self.dead[server]
        self.incarnations[server] += 1
        self.cluster.start(
            server, seed=self.incarnations[server] * 31, incarnation=self.incarnations[server]
        )
        self.cluster.publish_full(to=[server])

    def finish(self) -> None:
        """Restart the dead, then as the base workload."""
        for server in sorted(self.dead):
            self.restart(server)
        super().finish()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_churn_with_crashes_keeps_replicated_writes(seed: int) -> None:
    """Crashes may lose async writes but no acknowledged replicated write; nothing runs twice."""
    workload = CrashyWorkload(seed)
    for _ in range(STEPS):
        workload.step()
    workload.cluster.router.filters.clear()
    workload.finish()
    cluster = workload.cluster
    assert not workload.pending
    acknowledged = [
        (e.ref, e.request_id, e.durability.value)
        for _, e in cluster.router.all_events(WriteAcknowledged)
        if e.client_facing
    ]
    for session, part in PARTS:
        ref = PartRef(session_id=session, part=part)
        primary = cluster.server(workload.primary(session, part)).part(ref)
        assert primary is not None and primary.state is PartState.PRIMARY
        assert primary.data == primary.applied_seq == len(primary.dedup)
        held = {entry.request_id for entry in primary.dedup.entries()}
        replicated = {rid for key, rid, mode in acknowledged if key == ref and mode == "replicated"}
        assert replicated <= held
        for server in SERVERS:
            copy = cluster.server(server).part(ref)
            assert copy is not None and copy.data == primary.data
