"""Waiting reads parked on a primary, until a write answers them or their wait ends.

A waiting read is a read-only operation of `PartSpec.wait_ops` whose handler said it has nothing
yet (`HandlerResult.waiting`). The server core parks it here, per part in arrival order; after
each write to the part it runs the parked handlers again, and at each read's deadline (or when
the part stops being primary here) it answers the read "nothing yet". This module only keeps the
table: which reads wait, of which part and connection, and which is due first. It answers nothing
and reads no clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Generic, TypeVar

from forehand.core._driver import NodeId
from forehand.core.messages import PartRef

__all__ = ["ParkedRead", "WaitingReads"]

RequestT = TypeVar("RequestT")

HEAP_SLACK = 1024
"""Stale deadlines the heap may hold beyond twice the reads parked before it is rebuilt (a read
answered by a write leaves its deadline behind until it falls due)."""


class ParkedRead(Generic[RequestT]):
    """One parked request and the answer it gets if its wait ends without a result."""

    __slots__ = ("client", "deadline_us", "key", "ref", "request", "result", "status")

    def __init__(
        self,
        *,
        ref: PartRef,
        client: NodeId,
        request_id: int,
        request: RequestT,
        deadline_us: int,
        status: int,
        result: bytes,
    ) -> None:
        self.ref = ref
        """The part it reads."""
        self.client = client
        """The connection it came on, which the answer goes to: the client's, or for a
        forwarded read the forwarding server's."""
        self.key = (ref.session_id, request_id)
        """(session id, request id): a request parked again under the same id replaces it."""
        self.request = request
        """The request, to run again and to answer."""
        self.deadline_us = deadline_us
        """When it is answered "nothing yet" unless a write answered it first."""
        self.status = status
        """The "nothing yet" answer's status, from the handler's latest run."""
        self.result = result
        """The "nothing yet" answer's payload (the app's encoding of None)."""


class WaitingReads(Generic[RequestT]):
    """The parked reads of one server, bounded by its `waiting_reads_max`."""

    __slots__ = ("_by_client", "_by_part", "_heap", "_reads", "_tiebreak", "reads_max")

    def __init__(self, *, reads_max: int) -> None:
        assert reads_max >= 1, reads_max
        self.reads_max = reads_max
        """Most reads parked at once."""
        self._reads: dict[tuple[bytes, int], ParkedRead[RequestT]] = {}
        self._by_part: dict[PartRef, dict[tuple[bytes, int], None]] = {}
        self._by_client: dict[NodeId, dict[tuple[bytes, int], None]] = {}
        # (deadline, tie-break, key) of every parked read, with stale entries skipped lazily.
        self._heap: list[tuple[int, int, tuple[bytes, int]]] = []
        self._tiebreak = itertools.count()

    def __len__(self) -> int:
        return len(self._reads)

    def __contains__(self, ref: object) -> bool:
        """Whether a read of part `ref` is parked."""
        return ref in self._by_part

    def full(self, key: tuple[bytes, int]) -> bool:
        """Whether parking one more read (not replacing `key`) would pass the bound."""
        return key not in self._reads and len(self._reads) >= self.reads_max

    def park(self, read: ParkedRead[RequestT]) -> ParkedRead[RequestT] | None:
        """Park `read` after the reads of its part; the read of the same key it replaced, if
        any (the caller decides whether that one is owed an answer)."""
        replaced = self._forget(read.key)
        assert len(self._reads) < self.reads_max, len(self._reads)
        self._reads[read.key] = read
        self._by_part.setdefault(read.ref, {})[read.key] = None
        self._by_client.setdefault(read.client, {})[read.key] = None
        heapq.heappush(self._heap, (read.deadline_us, next(self._tiebreak), read.key))
        if len(self._heap) > 2 * len(self._reads) + HEAP_SLACK:
            self._compact()
        return replaced

    def of_part(self, ref: PartRef) -> list[ParkedRead[RequestT]]:
        """The reads of part `ref`, in arrival order (a copy: the caller may remove them)."""
        return [self._reads[key] for key in self._by_part.get(ref, ())]

    def remove(self, read: ParkedRead[RequestT]) -> None:
        """Forget `read` (answered)."""
        self._forget(read.key)

    def take_part(self, ref: PartRef) -> list[ParkedRead[RequestT]]:
        """Forget and return the reads of part `ref`, in arrival order."""
        return self._take(list(self._by_part.get(ref, ())))

    def take_client(self, client: NodeId) -> list[ParkedRead[RequestT]]:
        """Forget and return the reads that came on `client`'s connection."""
        return self._take(list(self._by_client.get(client, ())))

    def take_session(self, client: NodeId, session_id: bytes) -> list[ParkedRead[RequestT]]:
        """Forget and return the reads of `session_id` that came on `client`'s connection."""
        keys = [key for key in self._by_client.get(client, ()) if key[0] == session_id]
        return self._take(keys)

    def take_all(self) -> list[ParkedRead[RequestT]]:
        """Forget and return every parked read, oldest part first."""
        return self._take([key for keys in self._by_part.values() for key in keys])

    def take_due(self, now_us: int) -> Iterator[ParkedRead[RequestT]]:
        """Forget and yield the reads whose deadline is `now_us` or earlier, earliest first."""
        heap = self._heap
        while heap and heap[0][0] <= now_us:
            deadline_us, _, key = heapq.heappop(heap)
            read = self._reads.get(key)
            if read is not None and read.deadline_us == deadline_us:
                self._forget(key)
                yield read

    def due_us(self) -> int | None:
        """The earliest deadline of a parked read (perhaps of one already answered), or None."""
        while self._heap:
            deadline_us, _, key = self._heap[0]
            read = self._reads.get(key)
            if read is not None and read.deadline_us == deadline_us:
                return deadline_us
            heapq.heappop(self._heap)
        return None

    def _take(self, keys: list[tuple[bytes, int]]) -> list[ParkedRead[RequestT]]:
        taken = [self._forget(key) for key in keys]
        return [read for read in taken if read is not None]

    def _forget(self, key: tuple[bytes, int]) -> ParkedRead[RequestT] | None:
        read = self._reads.pop(key, None)
        if read is None:
            return None
        _unindex(self._by_part, read.ref, key)
        _unindex(self._by_client, read.client, key)
        if not self._reads:
            self._heap.clear()
        return read

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if self._live(entry)]
        heapq.heapify(self._heap)

    def _live(self, entry: tuple[int, int, tuple[bytes, int]]) -> bool:
        read = self._reads.get(entry[2])
        return read is not None and read.deadline_us == entry[0]


OwnerT = TypeVar("OwnerT")


def _unindex(
    index: dict[OwnerT, dict[tuple[bytes, int], None]], owner: OwnerT, key: tuple[bytes, int]
) -> None:
    keys = index.get(owner)
    if keys is not None:
        keys.pop(key, None)
        if not keys:
            del index[owner]
