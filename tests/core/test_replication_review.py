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
