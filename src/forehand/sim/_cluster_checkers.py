"""Checkers that only make sense for a cluster of the real cores.

`DivergenceChecker` reads the observation contract like the generic checkers: a replica whose
re-execution of its primary's log answers differently held a state its primary never had.
`ConvergenceChecker` looks at the cores themselves once the run is over: after the faults healed
and the liveness bound passed, the cluster must have settled in one defined state.
`ExpiryChecker` looks at the clients when the manager expires a session: none may still hold a
credential of it that has not expired.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core import PartState
from forehand.core.messages import PartRef
from forehand.core.tokens import TokenError, TokenSealer
from forehand.sim._checkers import InvariantViolated
from forehand.sim.observations import (
    MapVersionObserved,
    Observation,
    Observed,
    ReplicaDiverged,
    SessionExpired,
)

if TYPE_CHECKING:
    from forehand.sim._cluster import SimCluster
    from forehand.sim._simulator import Simulator

__all__ = ["ConvergenceChecker", "DivergenceChecker", "ExpiryChecker"]

OVERDUE_SLACK_US = 2_000_000
"""How late past its expiry a session may still be in the map at the end of a run: two grains, a
sweep round and its close's commit, with room."""

_PRIMARY_LIKE = frozenset(
    {PartState.PRIMARY, PartState.HANDING_OFF, PartState.ABORTING, PartState.RECEIVING}
)
"""States in which a server takes writes, or is about to: only the map's primary may be in one."""


class DivergenceChecker:
    """A replica never re-executes an entry to a different answer than its primary's."""

    observes: tuple[type[Observation], ...] = (ReplicaDiverged,)

    def after_event(self, sim: Simulator, event: Observed) -> None:
        """History divergences (after a failover dropped entries) reset the copy; others fail."""
        observation = event.observation
        assert isinstance(observation, ReplicaDiverged)
        if observation.history:
            return
        raise InvariantViolated(
            f"replica {observation.node} of part {observation.part_key} re-executed entry "
            f"{observation.log_index} to a different answer than its primary's",
            checker=type(self).__name__,
        )

    def at_end(self, sim: Simulator) -> None:
        """Nothing to judge at the end."""


MAP_PROPAGATION_ALLOWANCE_US = 1_000_000
"""A map version the manager committed less than this before the end of a run may not have
reached every server yet (the healed network delivers it within milliseconds)."""


class ConvergenceChecker:
    """At the end of a healed run: no handoff stuck past its deadline, every server on the
    manager's map version (or, for versions committed in the last
    `MAP_PROPAGATION_ALLOWANCE_US`, on its way to it), and each part not moving primary on
    exactly the server the map names (no split brain)."""

    observes: tuple[type[Observation], ...] = (MapVersionObserved,)

    def __init__(self, cluster: SimCluster) -> None:
        self._cluster = cluster
        self._manager_versions: list[tuple[int, int]] = []

    def after_event(self, sim: Simulator, event: Observed) -> None:
        """Remember when the manager adopted each map version (handoffs near the end of a run,
        an automatic rebalance's say, commit versions the servers hear of a moment later)."""
        observation = event.observation
        assert isinstance(observation, MapVersionObserved)
        if observation.node == self._cluster.manager().node_id:
            self._manager_versions.append((event.time_us, observation.map_version))

    def _settled_version(self, now_us: int, newest: int) -> int:
        """The oldest version a server may hold at the end: the manager's as of the allowance
        before it."""
        settled = newest
        for time_us, version in reversed(self._manager_versions):
            if time_us <= now_us - MAP_PROPAGATION_ALLOWANCE_US:
                return min(settled, version)
            settled = min(settled, version)
        return settled

    def at_end(self, sim: Simulator) -> None:
        """Judge the settled state of the manager and every server."""
        cluster = self._cluster
        manager = cluster.manager()
        current = manager.shard_map
        if current is None:
            self._fail("the manager never loaded its map")
            return
        # A handoff may still run when the run ends (planned moves queue behind the caps); its
        # parts are in flight and not judged, but one past its own deadline is stuck.
        moving: set[PartRef] = set()
        for handoff in manager.orchestrator.handoffs():
            if handoff.deadline_us is not None and handoff.deadline_us < sim.now_us:
                self._fail(f"handoff past its deadline at the end: {handoff}")
            moving.update(handoff.parts)
        settled = self._settled_version(sim.now_us, current.version)
        for server_id in cluster.server_ids:
            core = cluster.server(server_id)
            if core is None or not cluster.up(server_id):
                continue
            if not settled <= core.map_version <= current.version:
                self._fail(
                    f"server {server_id} holds map version {core.map_version}, the manager "
                    f"{current.version}"
                    + (
                        f" ({settled} or newer {MAP_PROPAGATION_ALLOWANCE_US} us before)"
                        if settled != current.version
                        else ""
                    )
                )
        for key in current.part_keys():
            ref = PartRef(session_id=key.session_id, part=key.part)
            if ref not in moving:
                self._judge_part(ref, current.primary_of(key))

    def _judge_part(self, ref: PartRef, primary: str) -> None:
        cluster = self._cluster
        if not cluster.up(primary):
            self._fail(f"part {ref} has primary {primary}, which is not running")
        for server_id in cluster.server_ids:
            core = cluster.server(server_id)
            if core is None or not cluster.up(server_id):
                continue
            part = core.part(ref)
            state = None if part is None else part.state
            if server_id == primary:
                if part is None or state is not PartState.PRIMARY or part.fenced:
                    self._fail(f"part {ref}: primary {primary} holds it as {state}")
            elif state in _PRIMARY_LIKE:
                self._fail(f"part {ref}: {server_id} holds it as {state}, the map says {primary}")

    def _fail(self, message: str) -> None:
        raise InvariantViolated(message, checker=type(self).__name__)


class ExpiryChecker:
    """The manager expires a session only once no running client holds a credential of it that
    is still valid (it could bind the session on a new connection), read from the clients' cores
    at the instant of the expiry. Servers renew credentials and report the renewals in their
    heartbeats; a report lost with a connection is covered by the next renewal's, which is what
    the margin of `session_expiry_ms` over `credential_lifetime_ms` is for."""

    observes: tuple[type[Observation], ...] = (SessionExpired,)

    def __init__(self, cluster: SimCluster, sealer: TokenSealer) -> None:
        self._cluster = cluster
        self._sealer = sealer
        self.expired = 0
        """Sessions expired in the run."""

    def after_event(self, sim: Simulator, event: Observed) -> None:
        """Fail when a running client holds an unexpired credential of the expired session."""
        observation = event.observation
        assert isinstance(observation, SessionExpired)
        self.expired += 1
        cluster = self._cluster
        for client_id in cluster.client_ids:
            core = cluster.client(client_id)
            if core is None or observation.session_id not in core.session_ids():
                continue
            credential = core.session_snapshot(observation.session_id).credential
            try:
                claims = self._sealer.open_credential(credential, now_us=event.time_us)
            except TokenError:
                continue
            raise InvariantViolated(
                f"the manager expired session {observation.session_id.hex()} at "
                f"{event.time_us} us while client {client_id} holds a credential of it valid "
                f"until {claims.expires_us} us",
                checker=type(self).__name__,
            )

    def at_end(self, sim: Simulator) -> None:
        """When sessions expire: every session of the manager's map is counted, and none is
        overdue by more than `OVERDUE_SLACK_US` (a sweep that stalled, or a session it lost
        track of, would keep a session no client can bind for ever)."""
        manager = self._cluster.manager()
        current = manager.shard_map
        expiry = manager._expiry
        if current is None or not expiry.enabled:
            return
        sessions = {key.session_id for key in current.part_keys()}
        untracked = sorted(s for s in sessions if not expiry.tracks(s))
        if untracked:
            raise InvariantViolated(
                f"{len(untracked)} session(s) of the map have no expiry counted, e.g. "
                f"{untracked[0].hex()}",
                checker=type(self).__name__,
            )
        overdue = expiry.overdue(now_us=sim.now_us, slack_us=OVERDUE_SLACK_US)
        if overdue:
            raise InvariantViolated(
                f"{len(overdue)} session(s) overdue for expiry by more than "
                f"{OVERDUE_SLACK_US} us at the end, e.g. {overdue[0].hex()}",
                checker=type(self).__name__,
            )
