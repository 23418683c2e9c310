"""A handoff committed with fewer parts than it planned: the parts left out stop being moving."""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core.messages import HandoffAssigned, HandoffCompleted, PartRef
from forehand.wire import CloseSession, ReasonCode

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, HeldCommit, ManagerHarness, opened_refs
else:
    from _manager_helpers import MANAGER, HeldCommit, ManagerHarness, opened_refs

SERVERS = ("s1", "s2", "s3", "s4")


def test_a_part_left_out_of_a_committed_handoff_does_not_stay_moving() -> None:
    harness = ManagerHarness()
    harness.join(*SERVERS)
    refs: list[PartRef] = []
    for _ in range(12):
        opened = harness.open_session(("auth",))
        assert opened is not None
        refs.extend(opened_refs(opened))
    by_primary: dict[str, list[PartRef]] = {}
    for ref in refs:
        by_primary.setdefault(harness.placement(ref).primary, []).append(ref)
    source, (kept, closed, *_) = next((s, r) for s, r in sorted(by_primary.items()) if len(r) >= 2)
    # The close of `closed`'s session is in the store when the handoff is planned.
    held = HeldCommit(harness)
    harness.router.store_executors[MANAGER] = held
    harness.router.send("c1", MANAGER, CloseSession(session_id=closed.session_id))
    assert held.held
    # Two moves of `source`'s parts to one target (an operator's or a rebalance's), planned
    # as one batch while the close is in the store.
    orchestrator = harness.manager.orchestrator
    target = next(s for s in SERVERS if s != source)
    for ref in (kept, closed):
        assert harness.move(ref, source=source, target=target, reason=ReasonCode.REBALANCE)
    harness.tick(100, alive=SERVERS)
    (planned,) = orchestrator.handoffs()
    assert set(planned.parts) == {kept, closed}
    held.release()
    # The handoff committed with `kept` only (the close removed `closed` first).
    assigned = [a for a in harness.take(source, HandoffAssigned)]
    assert assigned and assigned[-1].parts == (kept,)
    harness.router.send(
        source,
        MANAGER,
        HandoffCompleted(handoff_id=assigned[-1].handoff_id, server_id=source, parts=(kept,)),
    )
    assert orchestrator.handoffs() == []
    # The left-out part is no longer moving.
    assert not orchestrator.is_moving(closed), "leaked in Orchestrator._moving"
    assert orchestrator.handoff_of(closed) is None
