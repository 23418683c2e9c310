"""The primary side of log shipping: one stream per replica of a part, batched and resumable.

A stream starts by probing: an empty `LogShipped` whose answer tells the primary where the replica
stands and, through the acknowledged entry's epoch, whether its history matches the primary's.
From then on the primary ships batches of at most `log_batch_entries_max` entries, with at most
`replication_inflight_batches_max` unacknowledged; an acknowledgement below the oldest batch in
flight (the replica missed a batch), a batch unacknowledged for `replication_retry_ms` (a lost
message or a reconnect) or a replica that reset its part all restart shipping from the last
acknowledged sequence. A replica behind the retained log, or whose history diverged, gets a
`SnapshotShipped`. A handoff target is a stream with a seal: the batch that reaches the seal
sequence is marked `sealed`, and the target's sealed acknowledgement ends handoff step 3.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass

from forehand.core._driver import NodeId
from forehand.core._part import Part, PartLog, StateNotEncodableError
from forehand.core.messages import LogAcknowledged, LogShipped, SnapshotShipped

__all__ = ["RESEND_DOUBLINGS_MAX", "AckOutcome", "Replication", "ReplicaStream", "Shipment"]

SNAPSHOT_BYTES_MAX = 30 << 20
"""Most bytes a part's snapshot may carry (its encoded state, and the payloads and results of
the requests its dedup table remembers): one cluster message carries it, and the runtime's
cluster frames stop at 32 MiB (`CLUSTER_FRAME_BYTES_MAX`). A part past it cannot be copied to a
new replica, a handoff's target or a server catching up; it is reported (`StateNotEncodable`)
instead of failing at the transport."""
RESEND_DOUBLINGS_MAX = 3
"""A replica that stays silent is shipped to again after `replication_retry_ms`, then twice,
four and eight times that: a server whose peer died resends every part's probe to it at most
every 4 s (at the default 500 ms) until a map drops the peer, rather than twice a second."""

Shipment = LogShipped | SnapshotShipped
"""What a stream sends."""


class ReplicaStream:
    """Shipping progress towards one replica (or handoff target) of one part."""

    __slots__ = (
        "acked_seq",
        "history_checked",
        "inflight",
        "needs_snapshot",
        "node",
        "resends",
        "restarted_from",
        "seal_acked",
        "seal_sent",
        "seal_seq",
        "sent_seq",
    )

    def __init__(self, node: NodeId) -> None:
        self.node = node
        """The replica's node id."""
        self.acked_seq: int | None = None
        """Highest sequence the replica acknowledged; None until the probe is answered."""
        self.sent_seq = 0
        """Highest sequence shipped (acknowledged or not)."""
        self.inflight: list[tuple[int, int]] = []
        """(last sequence, sent at) of each unacknowledged batch, oldest first; at most
        `replication_inflight_batches_max` long, so a list (56 bytes empty, where a deque takes
        about 600: one stream per replica of every part a server leads)."""
        self.seal_seq: int | None = None
        """For a handoff target: the sequence the sealed batch ends at."""
        self.seal_sent = False
        """Whether the sealed batch is in flight."""
        self.seal_acked = False
        """Whether the target acknowledged the sealed batch."""
        self.needs_snapshot = False
        """The replica's history diverged: the next shipment is a snapshot."""
        self.restarted_from: int | None = None
        """The acknowledged sequence shipping last restarted from (None: never restarted)."""
        self.resends = 0
        """Resends in a row since the replica last answered: each doubles the wait before the
        next, up to `RESEND_DOUBLINGS_MAX` doublings of `replication_retry_ms`."""
        self.history_checked = False
        """Whether an acknowledgement (a probe's answer, or a snapshot's) showed the replica's
        log to be a prefix of the primary's; until then a probe is never sealed, since an empty
        sealed batch would let a target whose log is as long but different (another primary's)
        take the part over with it."""

    def restart(self) -> None:
        """Ship again from the last acknowledged sequence (or probe again)."""
        self.inflight.clear()
        self.sent_seq = self.acked_seq or 0
        self.seal_sent = False
        self.restarted_from = self.acked_seq

    def reprobe(self) -> None:
        """Forget the replica's position (its process may have restarted): probe it again."""
        self.acked_seq = None
        self.restart()


@dataclass(frozen=True, slots=True, kw_only=True)
class AckOutcome:
    """What one `LogAcknowledged` changed."""

    known: bool
    """False when the sender is not a stream of this part (a stale or foreign acknowledgement)."""
    diverged: bool = False
    """The replica's history does not match the primary's; it gets a snapshot."""
    sealed: bool = False
    """This acknowledgement completes the handoff target's sealed batch."""


class Replication:
    """Log shipping for one part on its primary (or handoff source)."""

    unencodable: list[tuple[NodeId, str]] | None = None
    """(replica, error) of each snapshot the part's state could not be encoded for since the
    owner last took them (`take_unencodable`); a class default, so that the one instance per
    part a server leads pays nothing for it until it happens."""

    def __init__(
        self,
        *,
        batch_entries_max: int,
        inflight_batches_max: int,
        retry_us: int,
    ) -> None:
        self._batch_entries_max = batch_entries_max
        self._inflight_batches_max = inflight_batches_max
        self._retry_us = retry_us
        self.streams: dict[NodeId, ReplicaStream] = {}
        """Streams by replica node id."""

    def take_unencodable(self) -> list[tuple[NodeId, str]]:
        """The snapshots that could not be encoded since the last call (see `unencodable`)."""
        failures = self.unencodable or []
        self.unencodable = None
        return failures

    def set_replicas(self, nodes: Iterable[NodeId]) -> bool:
        """Ship to exactly `nodes` (plus a handoff target), keeping existing streams' progress;
        True when a stream was added (it has everything to ship: the others shipped as before,
        and a stream dropped leaves nothing new to send)."""
        wanted = list(nodes)
        for node in [node for node in self.streams if node not in wanted]:
            if self.streams[node].seal_seq is None:
                del self.streams[node]
        added = False
        for node in wanted:
            if node not in self.streams:
                self.streams[node] = ReplicaStream(node)
                added = True
        return added

    def seal_towards(self, node: NodeId, *, seal_seq: int) -> ReplicaStream:
        """Make `node` the handoff target: its stream ends with a sealed batch at `seal_seq`."""
        stream = self.streams.get(node)
        if stream is None:
            stream = self.streams[node] = ReplicaStream(node)
        elif stream.seal_seq is None:
            # A replica's stream becomes the target's. What it has in flight went out under the
            # part's older epoch, which a target that knows of the move ignores unanswered, and
            # its resend time may have backed off (a target already waiting stays silent): the
            # sealed batch waited behind that window, or went out empty after it, past the
            # handoff's deadline, and the `async` writes a drained source acknowledged while the
            # manager's messages to it were lost went with the failover (`forehand sim
            # --scenario drain-one-way --seed 17600131`, `--seed 17600168`). Ship again from the
            # acknowledged sequence, under the new epoch.
            stream.restart()
            stream.resends = 0
        stream.seal_seq = seal_seq
        stream.seal_sent = False
        stream.seal_acked = False
        return stream

    def only_target(self) -> None:
        """Drop every stream but the handoff target's: the new primary ships to the replicas."""
        for node in [node for node, stream in self.streams.items() if stream.seal_seq is None]:
            del self.streams[node]

    # The questions below are asked for every write and acknowledgement, of one or two streams:
    # plain loops, which cost less than generators there.

    def acked_max(self) -> int:
        """The highest sequence any replica acknowledged (what `replicated` answers wait for)."""
        highest = 0
        for stream in self.streams.values():
            acked_seq = stream.acked_seq
            if acked_seq is not None and acked_seq > highest:
                highest = acked_seq
        return highest

    def acked_min(self) -> int:
        """The lowest sequence every replica acknowledged (what the primary may trim through)."""
        lowest: int | None = None
        for stream in self.streams.values():
            acked_seq = stream.acked_seq or 0
            if lowest is None or acked_seq < lowest:
                lowest = acked_seq
        return lowest or 0

    def idle(self, last_seq: int) -> bool:
        """Whether every stream acknowledged `last_seq` (and its seal) with nothing in flight."""
        for stream in self.streams.values():
            if (
                stream.acked_seq != last_seq
                or stream.inflight
                or (stream.seal_seq is not None and not stream.seal_acked)
            ):
                return False
        return True

    def resend_due_us(self, skip: Container[NodeId] = ()) -> int | None:
        """When the oldest batch in flight on any stream (but those to `skip`) is due to be sent
        again (None when nothing is in flight)."""
        due: int | None = None
        for stream in self.streams.values():
            if stream.node in skip:
                continue
            inflight = stream.inflight
            if inflight:
                at = inflight[0][1] + (self._retry_us << stream.resends)
                if due is None or at < due:
                    due = at
        return due

    def settled(self, last_seq: int) -> bool:
        """Whether there is nothing to ship now or later until the log grows: `idle`, and no
        stream waits for a snapshot."""
        return self.idle(last_seq) and not any(
            stream.needs_snapshot for stream in self.streams.values()
        )

    def on_ack(self, part: Part, ack: LogAcknowledged, *, source: NodeId) -> AckOutcome:
        """Account for a replica's acknowledgement of `part`'s log."""
        stream = self.streams.get(source)
        if stream is None:
            return AckOutcome(known=False)
        stream.resends = 0
        if stream.acked_seq is None or ack.acked_seq > part.log.last_seq:
            outcome = self._on_probe_answer(part, stream, ack)
            if outcome.diverged:
                return outcome
            return AckOutcome(known=True, sealed=self._sealed_by(stream, ack))
        known_epoch = part.log.epoch_at(ack.acked_seq) if ack.acked_seq else 0
        if ack.acked_epoch and known_epoch is not None and known_epoch != ack.acked_epoch:
            # The peer's entry at that sequence is another history's (a primary promoted by a
            # failover answering the seal of a source replaced while it was cut off): nothing
            # it acknowledges is this log's, so nothing counts as replicated by it; it gets a
            # snapshot, as a replica whose probe diverged does. An epoch of 0 is one the peer
            # no longer knows (its log was trimmed there): nothing to compare.
            return self._diverged(stream)
        stream.acked_seq = ack.acked_seq
        if not stream.history_checked and known_epoch == ack.acked_epoch:
            # After a diverged probe: the replica acknowledges the snapshot's position and epoch.
            stream.history_checked = True
        inflight = stream.inflight
        behind = inflight[0][0] if inflight else stream.sent_seq
        if ack.acked_seq < behind and ack.acked_seq != stream.restarted_from:
            # The replica did not apply the oldest batch in flight (it missed one, or reset).
            # Once per position: the answers to batches (or probes) sent before the restart say
            # the same, and restarting on each would resend everything again for each one; a
            # replica working through a backlog of them then never catches up (the resends
            # queue behind it). A resend lost as well is shipped again by the retry timer.
            stream.restart()
        acknowledged = 0
        while acknowledged < len(inflight) and inflight[acknowledged][0] <= ack.acked_seq:
            acknowledged += 1
        if stream.seal_sent and not ack.sealed and acknowledged == len(inflight) and acknowledged:
            # Only a sealed acknowledgement answers the sealed batch (the newest in flight): an
            # earlier batch's, reaching the seal's sequence, leaves it to be resent if lost.
            acknowledged -= 1
        if acknowledged:
            del inflight[:acknowledged]
        return AckOutcome(known=True, sealed=self._sealed_by(stream, ack))

    @staticmethod
    def _sealed_by(stream: ReplicaStream, ack: LogAcknowledged) -> bool:
        """Whether `ack` is the target's first acknowledgement of the sealed batch."""
        sealed = (
            ack.sealed
            and stream.seal_seq is not None
            and ack.acked_seq >= stream.seal_seq
            and not stream.seal_acked
        )
        if sealed:
            stream.seal_acked = True
        return sealed

    def _on_probe_answer(
        self, part: Part, stream: ReplicaStream, ack: LogAcknowledged
    ) -> AckOutcome:
        # A sealed answer of epoch 0 comes from a target that took the part over with this
        # stream's seal (it acknowledges no other) and has trimmed its log past the sealed entry
        # since: the same history, not one to replace with a snapshot it would refuse.
        matches = ack.acked_seq == 0 or (
            ack.acked_seq <= part.log.last_seq
            and (
                part.log.epoch_at(ack.acked_seq) == ack.acked_epoch
                or (ack.sealed and ack.acked_epoch == 0 and stream.seal_seq is not None)
            )
        )
        if not matches:
            # The histories differ (or cannot be compared): a snapshot replaces the replica's.
            return self._diverged(stream)
        stream.inflight.clear()
        stream.seal_sent = False
        stream.history_checked = True
        stream.acked_seq = ack.acked_seq
        stream.sent_seq = ack.acked_seq
        return AckOutcome(known=True)

    @staticmethod
    def _diverged(stream: ReplicaStream) -> AckOutcome:
        """The replica's history is not this log's: what it acknowledged counts for nothing,
        and a snapshot replaces its copy (a seal in flight is sent again after it)."""
        stream.inflight.clear()
        stream.seal_sent = False
        stream.acked_seq = 0
        stream.sent_seq = 0
        stream.needs_snapshot = True
        return AckOutcome(known=True, diverged=True)

    def pending(self, last_seq: int) -> list[NodeId]:
        """The nodes whose stream still has something to ship or to hear about (none when
        `idle`)."""
        return [
            node
            for node, stream in self.streams.items()
            if (
                stream.acked_seq != last_seq
                or stream.inflight
                or stream.needs_snapshot
                or (stream.seal_seq is not None and not stream.seal_acked)
            )
        ]

    def ship(
        self, part: Part, *, epoch: int, now_us: int, skip: Container[NodeId] = ()
    ) -> list[tuple[NodeId, Shipment]]:
        """Whatever each stream (but those to `skip`) may send now, in stream order."""
        shipments: list[tuple[NodeId, Shipment]] = []
        streams = self.streams
        for node in sorted(streams) if len(streams) > 1 else streams:
            if node in skip:
                continue
            stream = streams[node]
            if stream.inflight and now_us - stream.inflight[0][1] >= (
                self._retry_us << stream.resends
            ):
                stream.restart()
                stream.resends = min(stream.resends + 1, RESEND_DOUBLINGS_MAX)
            self._ship_stream(part, stream, epoch=epoch, now_us=now_us, out=shipments)
        return shipments

    def ship_again(
        self, part: Part, node: NodeId, *, epoch: int, now_us: int
    ) -> list[tuple[NodeId, Shipment]]:
        """What the stream to `node` sends when it starts over from its last acknowledged
        sequence (a probe when it has none): a message to a peer that seems down, whose
        connection attempt tells whether it is back."""
        stream = self.streams.get(node)
        shipments: list[tuple[NodeId, Shipment]] = []
        if stream is not None:
            stream.restart()
            self._ship_stream(part, stream, epoch=epoch, now_us=now_us, out=shipments)
        return shipments

    def _ship_stream(
        self,
        part: Part,
        stream: ReplicaStream,
        *,
        epoch: int,
        now_us: int,
        out: list[tuple[NodeId, Shipment]],
    ) -> None:
        node = stream.node
        if stream.acked_seq is None:
            if not stream.inflight:
                out.append((node, self._probe(part, stream, epoch=epoch, now_us=now_us)))
            return
        for shipment in self._batches(part, stream, epoch=epoch, now_us=now_us):
            out.append((node, shipment))

    def _probe(self, part: Part, stream: ReplicaStream, *, epoch: int, now_us: int) -> LogShipped:
        last_seq = part.log.last_seq
        # The source's log passes the seal only with the new primary's own entries (a source
        # listed as its replica applies them while it waits for the acknowledgement): the probe
        # is sealed then too, since a primary answers only a sealed one.
        seal_seq = stream.seal_seq
        sealed = seal_seq is not None and seal_seq <= last_seq and stream.history_checked
        stream.seal_sent = sealed
        stream.inflight.append((last_seq, now_us))
        return LogShipped(ref=part.ref, epoch=epoch, prev_seq=last_seq, entries=(), sealed=sealed)

    def _batches(
        self, part: Part, stream: ReplicaStream, *, epoch: int, now_us: int
    ) -> list[Shipment]:
        out: list[Shipment] = []
        log = part.log
        while len(stream.inflight) < self._inflight_batches_max or self._seal_next(stream, log):
            if stream.needs_snapshot or stream.sent_seq < log.first_seq - 1:
                snapshot = self._snapshot(part, stream, epoch=epoch, now_us=now_us)
                if snapshot is None:
                    break
                out.append(snapshot)
                continue
            if stream.sent_seq >= log.last_seq:
                if stream.seal_seq is not None and not stream.seal_sent:
                    out.append(self._sealed_tail(part, stream, epoch=epoch, now_us=now_us))
                break
            entries = log.slice(stream.sent_seq + 1, self._batch_entries_max)
            last = entries[-1].seq
            sealed = stream.seal_seq is not None and last >= stream.seal_seq
            stream.seal_sent = stream.seal_sent or sealed
            out.append(
                LogShipped(
                    ref=part.ref,
                    epoch=epoch,
                    prev_seq=stream.sent_seq,
                    entries=entries,
                    sealed=sealed,
                )
            )
            stream.sent_seq = last
            stream.inflight.append((last, now_us))
        return out

    def _seal_next(self, stream: ReplicaStream, log: PartLog) -> bool:
        """Whether the stream's next batch is its sealed one, which goes even beside a full
        window: the batches in flight may be ones the target ignores (shipped before this
        source learned of the move, reaching a target that had), and the sealed batch's answer
        then restarts the stream at once, instead of after their resend time."""
        seal_seq = stream.seal_seq
        if seal_seq is None or stream.seal_sent or stream.needs_snapshot:
            return False
        sent_seq = stream.sent_seq
        if sent_seq < log.first_seq - 1:
            return False
        return min(sent_seq + self._batch_entries_max, log.last_seq) >= seal_seq

    def _snapshot(
        self, part: Part, stream: ReplicaStream, *, epoch: int, now_us: int
    ) -> SnapshotShipped | None:
        """The snapshot the stream needs; None when the state does not encode (recorded in
        `unencodable`): it counts as a snapshot sent and lost, so the resend times, backing
        off, try again, and the stream sends nothing meanwhile."""
        seq = part.log.last_seq
        stream.needs_snapshot = False
        stream.sent_seq = seq
        stream.inflight.append((seq, now_us))
        try:
            state = part.snapshot_state()
            dedup = part.dedup.entries()
            size = len(state) + sum(len(entry.payload) + len(entry.result) for entry in dedup)
            if size > SNAPSHOT_BYTES_MAX:
                raise StateNotEncodableError(
                    f"its snapshot (the state, {len(state)} bytes, and the requests its dedup "
                    f"table remembers) takes {size} bytes, over the {SNAPSHOT_BYTES_MAX} one "
                    "snapshot may carry: no replica, handoff target or server catching up can "
                    "receive a copy; keep the part's state (and its answers) smaller"
                )
        except StateNotEncodableError as error:
            if self.unencodable is None:
                self.unencodable = []
            self.unencodable.append((stream.node, str(error)))
            return None
        return SnapshotShipped(
            ref=part.ref,
            epoch=epoch,
            seq=seq,
            state=state,
            dedup=dedup,
            seq_epoch=part.log.last_epoch,
        )

    def _sealed_tail(
        self, part: Part, stream: ReplicaStream, *, epoch: int, now_us: int
    ) -> LogShipped:
        stream.seal_sent = True
        stream.inflight.append((stream.sent_seq, now_us))
        return LogShipped(
            ref=part.ref, epoch=epoch, prev_seq=stream.sent_seq, entries=(), sealed=True
        )
