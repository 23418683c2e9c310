"""Second reading of log shipping: acknowledgements that arrive late, lost seals, retries, settling.

Each test stages one way the primary's side of replication could go wrong (an acknowledgement
counted for the wrong batch, a stream that stops retrying, a write answered too early) between
real server cores; dropped and delayed messages are router filters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._part import PartState
from forehand.core.messages import LogAcknowledged, LogShipped

if TYPE_CHECKING:
    from tests.core._server_helpers import Cluster, ref
else:
    from _server_helpers import Cluster, ref

COUNTER = ref("counter")


def state(cluster: Cluster, server: str) -> PartState | None:
    """The state of `counter` on `server`."""
    part = cluster.server(server).part(COUNTER)
    return None if part is None else part.state


def test_lost_seal_is_resent_after_an_earlier_batch_is_acknowledged_past_it() -> None:
    """The acknowledgement of an unsealed batch that reaches the seal's sequence, arriving after
    the sealed (empty) batch went out, leaves the seal in flight: when the sealed batch is lost it
    is resent after replication_retry_ms and the handoff completes before its deadline."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.router.advance(ms=20)
    delayed: list[LogAcknowledged] = []
    seals_dropped: list[LogShipped] = []

    def delay_ack_drop_seal(source: str, destination: str, message: object) -> bool:
        if (
            isinstance(message, LogAcknowledged)
            and (source, destination) == ("s2", "s1")
            and message.acked_seq == 1
            and not delayed
        ):
            delayed.append(message)
            return True
        if isinstance(message, LogShipped) and message.sealed and not seals_dropped:
            seals_dropped.append(message)
            return True
        return False

    cluster.router.filters.append(delay_ack_drop_seal)
    cluster.request("s1", "counter")
    cluster.router.advance(ms=20)  # The batch of entry 1 went out; its acknowledgement is slow.
    assert delayed
    cluster.place("counter", "s2", "s1")  # s1 seals at 1: the empty sealed batch is lost.
    assert seals_dropped and seals_dropped[0].entries == ()
    assert state(cluster, "s1") is PartState.HANDING_OFF
    cluster.router.send("s2", "s1", delayed[0])  # The slow acknowledgement of entry 1.
    cluster.router.advance(ms=600)
    assert state(cluster, "s2") is PartState.PRIMARY
    assert state(cluster, "s1") is PartState.BACKUP


def test_sealed_log_reaches_a_target_whose_history_was_never_checked() -> None:
    """A handoff towards a replica whose history the source never compared (its probe was lost)
    does not let the target take over on an empty sealed probe: the target held a longer log of
    an older primary, so it first gets the source's snapshot and then the seal, and serves the
    source's state (the write the source executed after the failover included)."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    for _ in range(3):
        cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.router.partition("s1", "s2")
    for _ in range(2):
        cluster.request("s1", "counter")  # Entries 4 and 5 reach s3 only.
    cluster.router.advance(ms=50)
    cluster.router.remove("s1")  # s1 is lost; s3 is cut off from s2 (and the manager).
    cut = cluster.router.partition("s2", "s3")
    cluster.prepare_failover([COUNTER], to=["s2"])
    cluster.place("counter", "s2", "s3")  # s2 promoted with entries 1-3; its probe of s3 is lost.
    assert state(cluster, "s2") is PartState.PRIMARY
    cluster.responses()
    cluster.request("s2", "counter", client="c2")  # Entry 4 of s2's history: 4 in all.
    (answer,) = cluster.responses("c2")
    assert answer.payload == b"4"
    cluster.place("counter", "s3", "s2")  # The part moves on to s3.
    assert state(cluster, "s2") is PartState.HANDING_OFF
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    target = cluster.server("s3").part(COUNTER)
    assert target is not None and target.state is PartState.PRIMARY
    assert (target.data, target.applied_seq) == (4, 4)
    assert state(cluster, "s2") is PartState.BACKUP
