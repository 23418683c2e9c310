"""Tests of waiting reads on `ServerCore` (`_waiting.py`): parked, answered by writes and timers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from forehand.core._part import HandlerResult, PartSpec, PartState
from forehand.core._server_events import RequestExecuted
from forehand.core._waiting import HEAP_SLACK, ParkedRead, WaitingReads
from forehand.core.messages import (
    LogShipped,
    PartRef,
    RequestForwarded,
    decode_cluster_message,
    encode_cluster_message,
)
from forehand.placement import PartKey, Placement
from forehand.wire import CloseSession, ResponseStatus

if TYPE_CHECKING:
    from tests.core._server_helpers import SESSION, SPECS, Cluster, ref
else:
    from _server_helpers import SESSION, SPECS, Cluster, ref

WAIT_MS = 2_000
NOTHING = b"none"
"""What the chat's waiting read answers when its wait ends (an app encodes None there)."""


def chat(state: Any, op: str, payload: bytes) -> HandlerResult:
    """A chat log: `post` appends, `since i` (waiting) answers the messages after index i or
    nothing yet, `count` (a plain read) answers how many there are."""
    messages: tuple[bytes, ...] = tuple(state)
    if op == "post":
        messages = (*messages, payload)
        return HandlerResult(state=messages, status=ResponseStatus.OK, result=b"%d" % len(messages))
    if op == "since":
        newer = messages[int(payload) :]
        if not newer:
            return HandlerResult(
                state=state, status=ResponseStatus.OK, result=NOTHING, waiting=True
            )
        return HandlerResult(state=state, status=ResponseStatus.OK, result=b",".join(newer))
    if op == "count":
        return HandlerResult(state=state, status=ResponseStatus.OK, result=b"%d" % len(messages))
    return HandlerResult(state=state, status=ResponseStatus.UNKNOWN_OP, result=b"")


CHAT_SPECS = {
    **SPECS,
    "chat": PartSpec(
        handler=chat,
        initial_state=tuple,
        read_ops=frozenset({"since", "count"}),
        wait_ops={"since": WAIT_MS},
    ),
}
CHAT = ref("chat")


def chat_cluster(**overrides: Any) -> Cluster:
    """s1 primary of `chat` (replicas s2, s3), one message posted (answer taken)."""
    cluster = Cluster(specs=CHAT_SPECS, **overrides)
    cluster.place("chat", "s1", "s2", "s3")
    cluster.request("s1", "chat", "post", b"a", client="c2")
    cluster.responses("c2")
    return cluster


def wait_since(cluster: Cluster, index: int, *, client: str = "c1") -> int:
    """Send `since index` to s1 from `client`; assert it is parked, not answered."""
    request_id = cluster.request("s1", "chat", "since", b"%d" % index, client=client)
    assert not cluster.responses(client)
    return request_id


def test_a_parked_read_is_answered_by_a_later_write() -> None:
    """A waiting read with nothing new waits; another client's write answers it at once."""
    cluster = chat_cluster()
    request_id = wait_since(cluster, 1)
    assert cluster.server("s1").reads_parked_count == 1
    cluster.request("s1", "chat", "post", b"b", client="c2")
    (answer,) = cluster.responses("c1")
    assert (answer.request_id, answer.status, answer.payload) == (
        request_id,
        ResponseStatus.OK,
        b"b",
    )
    assert cluster.server("s1").reads_parked_count == 0
    executed = [e for e in cluster.events("s1", RequestExecuted) if e.request_id == request_id]
    assert [e.log_index for e in executed] == [None]


def test_parked_reads_are_run_again_in_arrival_order_and_keep_waiting_if_still_empty() -> None:
    """Each write re-runs the parked handlers; one that still has nothing stays parked."""
    cluster = chat_cluster()
    first = wait_since(cluster, 1)
    later = wait_since(cluster, 2)
    cluster.request("s1", "chat", "post", b"b", client="c2")
    assert [(r.request_id, r.payload) for r in cluster.responses()] == [(first, b"b")]
    cluster.request("s1", "chat", "post", b"c", client="c2")
    assert [(r.request_id, r.payload) for r in cluster.responses()] == [(later, b"c")]


def test_a_parked_read_is_answered_nothing_at_its_deadline_by_the_timer() -> None:
    """At `wait_ms` the core's own timer answers OK with the handler's "nothing yet" payload."""
    cluster = chat_cluster()
    started_us = cluster.router.now_us
    request_id = wait_since(cluster, 1)
    server = cluster.server("s1")
    timer_us = server.timer_us()
    assert timer_us is not None and timer_us <= started_us + WAIT_MS * 1000
    cluster.router.advance(ms=WAIT_MS - 1)
    assert not cluster.responses()
    cluster.router.advance(ms=1)
    (answer,) = cluster.responses()
    assert (answer.request_id, answer.status, answer.payload) == (
        request_id,
        ResponseStatus.OK,
        NOTHING,
    )
    assert server.reads_parked_count == 0


def test_a_read_answered_by_a_write_is_not_answered_again_at_its_deadline() -> None:
    """The deadline of a read a write answered fires nothing."""
    cluster = chat_cluster()
    wait_since(cluster, 1)
    cluster.request("s1", "chat", "post", b"b", client="c2")
    assert len(cluster.responses()) == 1
    cluster.router.advance(ms=WAIT_MS + 1)
    assert not cluster.responses()


def test_a_handoff_answers_the_parked_reads_at_once_and_completes() -> None:
    """Handing the part off answers its parked reads "nothing yet" before anything else; the
    handoff goes on to the target as usual."""
    cluster = chat_cluster()
    request_id = wait_since(cluster, 1)
    move = cluster.map.override_placement(
        PartKey(session_id=SESSION, part="chat"), Placement(primary="s2", replicas=("s1", "s3"))
    )
    cluster.publish(*move.operations)
    cluster.assign_handoff([CHAT], source="s1", target="s2")
    (answer,) = cluster.responses()
    assert (answer.request_id, answer.status, answer.payload) == (
        request_id,
        ResponseStatus.OK,
        NOTHING,
    )
    cluster.router.advance(ms=100)
    target = cluster.server("s2").part(CHAT)
    assert target is not None and target.state is PartState.PRIMARY
    assert cluster.server("s1").reads_parked_count == 0


def test_a_move_by_the_map_answers_the_parked_reads() -> None:
    """A map naming another primary (no handoff message) ends the role too: answered at once."""
    cluster = chat_cluster()
    wait_since(cluster, 1)
    cluster.place("chat", "s2", "s1", "s3")
    assert [r.payload for r in cluster.responses()] == [NOTHING]
    part = cluster.server("s1").part(CHAT)
    assert part is not None and part.state is not PartState.PRIMARY


def test_a_primary_stepping_down_for_a_newer_epoch_answers_its_parked_reads() -> None:
    """A newer epoch's log demotes the primary to a replica: its parked reads are answered."""
    cluster = chat_cluster()
    wait_since(cluster, 1)
    cluster.router.advance(ms=50)
    cluster.router.send(
        "s2",
        "s1",
        LogShipped(ref=CHAT, epoch=cluster.map.version + 5, prev_seq=1, entries=(), sealed=False),
    )
    assert [r.payload for r in cluster.responses()] == [NOTHING]
    part = cluster.server("s1").part(CHAT)
    assert part is not None and part.state is PartState.REPLICA


def test_a_fenced_primary_answers_its_parked_reads() -> None:
    """A failover's fence answers the parked reads; a new one is refused TRY_AGAIN as before."""
    cluster = chat_cluster()
    wait_since(cluster, 1)
    cluster.prepare_failover([CHAT], to=["s1"])
    assert [(r.status, r.payload) for r in cluster.responses()] == [(ResponseStatus.OK, NOTHING)]
    cluster.request("s1", "chat", "since", b"1")
    assert [r.status for r in cluster.responses()] == [ResponseStatus.TRY_AGAIN]
    assert cluster.server("s1").reads_parked_count == 0


def test_a_dropped_part_answers_its_parked_reads() -> None:
    """A map that removes the part (its session closed at the manager) answers them."""
    cluster = chat_cluster()
    wait_since(cluster, 1)
    cluster.publish(*cluster.map.remove_session_parts(SESSION, ["chat"]).operations)
    assert [r.payload for r in cluster.responses()] == [NOTHING]
    assert cluster.server("s1").part(CHAT) is None


def test_shutdown_answers_every_parked_read() -> None:
    """`answer_waiting_reads` (the runtime's stop) answers them all."""
    cluster = chat_cluster()
    wait_since(cluster, 1)
    wait_since(cluster, 1, client="c2")
    server = cluster.server("s1")
    server.answer_waiting_reads(now_us=cluster.router.now_us)
    cluster.router.run()
    assert [r.payload for r in cluster.responses("c1") + cluster.responses("c2")] == [NOTHING] * 2


def test_parked_reads_past_the_bound_are_overloaded() -> None:
    """Past `waiting_reads_max` a waiting read is answered OVERLOADED; the others stay parked."""
    cluster = chat_cluster(waiting_reads_max=2)
    wait_since(cluster, 1)
    wait_since(cluster, 1)
    cluster.request("s1", "chat", "since", b"1")
    (refused,) = cluster.responses()
    assert refused.status is ResponseStatus.OVERLOADED
    assert cluster.server("s1").reads_parked_count == 2
    cluster.request("s1", "chat", "post", b"b", client="c2")
    assert [r.payload for r in cluster.responses()] == [b"b", b"b"]


def test_a_read_sent_again_under_its_id_replaces_the_parked_one() -> None:
    """The same request id parked twice counts once and is answered once."""
    cluster = chat_cluster(waiting_reads_max=1)
    request_id = wait_since(cluster, 1)
    cluster.request("s1", "chat", "since", b"1", request_id=request_id)
    assert not cluster.responses()
    assert cluster.server("s1").reads_parked_count == 1
    cluster.request("s1", "chat", "post", b"b", client="c2")
    assert [r.request_id for r in cluster.responses()] == [request_id]


def test_a_parked_read_of_a_closed_connection_is_dropped_unanswered() -> None:
    """When its connection is lost the read is forgotten: no answer, no deadline."""
    cluster = chat_cluster()
    wait_since(cluster, 1)
    cluster.router.disconnect("c1", "s1")
    assert cluster.server("s1").reads_parked_count == 0
    cluster.request("s1", "chat", "post", b"b", client="c2")
    cluster.router.advance(ms=WAIT_MS + 1)
    assert not cluster.responses("c1")


def test_a_parked_read_of_a_closed_session_is_dropped_unanswered() -> None:
    """CLOSE_SESSION on the connection forgets that session's parked reads only."""
    cluster = chat_cluster()
    wait_since(cluster, 1)
    cluster.router.send("c1", "s1", CloseSession(session_id=SESSION))
    cluster.router.run()
    assert cluster.server("s1").reads_parked_count == 0
    cluster.request("s1", "chat", "post", b"b", client="c2")
    cluster.router.advance(ms=WAIT_MS + 1)
    assert not cluster.responses("c1")


def test_read_ops_that_do_not_wait_are_answered_at_once() -> None:
    """A plain read, and a waiting read that has a result, answer at once; nothing is parked."""
    cluster = chat_cluster()
    cluster.request("s1", "chat", "count", b"")
    cluster.request("s1", "chat", "since", b"0")
    assert [r.payload for r in cluster.responses()] == [b"1", b"a"]
    assert cluster.server("s1").reads_parked_count == 0


def test_waiting_flag_of_an_op_that_is_no_waiting_read_answers_at_once() -> None:
    """A handler saying `waiting` for an op not in `wait_ops` is answered its payload at once."""
    specs = {
        **CHAT_SPECS,
        "chat": PartSpec(handler=chat, initial_state=tuple, read_ops=frozenset({"since"})),
    }
    cluster = Cluster(specs=specs)
    cluster.place("chat", "s1", "s2")
    cluster.request("s1", "chat", "since", b"0")
    assert [r.payload for r in cluster.responses()] == [NOTHING]


def handed_off_cluster(**overrides: Any) -> Cluster:
    """`chat_cluster` with the part handed off from s1 to s2: s2 primary, s1 forwarding."""
    cluster = chat_cluster(**overrides)
    move = cluster.map.override_placement(
        PartKey(session_id=SESSION, part="chat"), Placement(primary="s2", replicas=("s1", "s3"))
    )
    cluster.publish(*move.operations)
    cluster.assign_handoff([CHAT], source="s1", target="s2")
    cluster.router.advance(ms=50)
    target = cluster.server("s2").part(CHAT)
    assert target is not None and target.state is PartState.PRIMARY
    return cluster


def test_a_forwarded_waiting_read_is_parked_and_answered_through_the_forwarder() -> None:
    """During a handoff the source forwards a waiting read; the new primary parks it, and the
    write that answers it there reaches the client through the source."""
    cluster = handed_off_cluster()
    request_id = cluster.request("s1", "chat", "since", b"1")
    assert not cluster.responses()
    assert cluster.server("s2").reads_parked_count == 1
    cluster.request("s2", "chat", "post", b"b", client="c2")
    cluster.responses("c2")
    (answer,) = cluster.responses()
    assert (answer.request_id, answer.status, answer.payload) == (
        request_id,
        ResponseStatus.OK,
        b"b",
    )
    assert cluster.server("s2").reads_parked_count == 0


def test_a_forwarded_waiting_read_carries_its_budget_and_ends_with_it() -> None:
    """The forward carries what is left of the REQUEST's budget; the new primary answers
    "nothing yet" when it ends, through the source, well before `wait_ms`."""
    cluster = handed_off_cluster()
    request_id = cluster.request("s1", "chat", "since", b"1", wait_budget_ms=300)
    (forward,) = [m for *_, m in cluster.router.trace if isinstance(m, RequestForwarded)]
    assert forward.wait_budget_ms == 300
    cluster.router.advance(ms=299)
    assert not cluster.responses()
    cluster.router.advance(ms=1)
    assert [(r.request_id, r.status, r.payload) for r in cluster.responses()] == [
        (request_id, ResponseStatus.OK, NOTHING)
    ]


def test_a_forwarded_waiting_read_ends_before_the_forwarder_gives_up() -> None:
    """Without a budget, a forwarded read waits at most half of `forwarded_request_timeout_ms`:
    the client gets "nothing yet", never the forwarder's TRY_AGAIN."""
    cluster = handed_off_cluster(forwarded_request_timeout_ms=1_000)
    request_id = cluster.request("s1", "chat", "since", b"1")
    cluster.router.advance(ms=499)
    assert not cluster.responses()
    cluster.router.advance(ms=1)
    assert [(r.request_id, r.payload) for r in cluster.responses()] == [(request_id, NOTHING)]
    cluster.router.advance(ms=WAIT_MS)
    assert not cluster.responses()


def test_a_forwarded_parked_read_is_answered_through_the_forwarder_when_the_part_moves() -> None:
    """The new primary losing the part answers the forwarded read "nothing yet" at once, and
    the source relays it."""
    cluster = handed_off_cluster()
    request_id = cluster.request("s1", "chat", "since", b"1")
    cluster.place("chat", "s3", "s1", "s2")
    assert [(r.request_id, r.payload) for r in cluster.responses()] == [(request_id, NOTHING)]
    assert cluster.server("s2").reads_parked_count == 0


def test_a_read_sent_again_directly_releases_its_forwarded_copy() -> None:
    """The client re-sends a forwarded read to the new primary itself (after RESUME): the copy
    on its own connection stays parked, the forwarded one is answered TRY_AGAIN through the
    source, and a write answers the request once."""
    cluster = handed_off_cluster()
    request_id = cluster.request("s1", "chat", "since", b"1")
    cluster.request("s2", "chat", "since", b"1", request_id=request_id)
    assert [(r.request_id, r.status) for r in cluster.responses()] == [
        (request_id, ResponseStatus.TRY_AGAIN)
    ]
    assert cluster.server("s2").reads_parked_count == 1
    cluster.request("s2", "chat", "post", b"b", client="c2")
    cluster.responses("c2")
    assert [(r.request_id, r.payload) for r in cluster.responses()] == [(request_id, b"b")]


def test_a_forward_without_a_budget_encodes_without_the_field() -> None:
    """`RequestForwarded.wait_budget_ms` is left out of the encoding when None (forwards of
    requests without a budget keep their bytes) and round-trips when set, 0 included."""
    fields: dict[str, Any] = {
        "client": "c1",
        "request_id": 5,
        "session_id": SESSION,
        "part": "chat",
        "op": "since",
        "payload": b"1",
        "map_version": 3,
        "hops": 1,
    }
    plain = RequestForwarded(**fields)
    assert b"wait_budget_ms" not in encode_cluster_message(plain)
    assert decode_cluster_message(encode_cluster_message(plain)) == plain
    for budget_ms in (0, 1_500):
        budgeted = RequestForwarded(**fields, wait_budget_ms=budget_ms)
        assert decode_cluster_message(encode_cluster_message(budgeted)) == budgeted


def test_a_wait_budget_shorter_than_wait_ms_ends_the_wait() -> None:
    """A read whose REQUEST carries a budget below `wait_ms` is answered "nothing yet" when the
    budget ends: the client's deadline is near."""
    cluster = chat_cluster()
    request_id = cluster.request("s1", "chat", "since", b"1", wait_budget_ms=700)
    cluster.router.advance(ms=699)
    assert not cluster.responses()
    cluster.router.advance(ms=1)
    assert [(r.request_id, r.payload) for r in cluster.responses()] == [(request_id, NOTHING)]
    assert cluster.server("s1").reads_parked_count == 0


def test_a_wait_budget_longer_than_wait_ms_does_not_lengthen_the_wait() -> None:
    """The op's `wait_ms` still bounds the wait when the client could wait longer."""
    cluster = chat_cluster()
    cluster.request("s1", "chat", "since", b"1", wait_budget_ms=10 * WAIT_MS)
    cluster.router.advance(ms=WAIT_MS - 1)
    assert not cluster.responses()
    cluster.router.advance(ms=1)
    assert [r.payload for r in cluster.responses()] == [NOTHING]


def test_a_wait_budget_of_zero_answers_at_once() -> None:
    """Budget 0: "nothing yet" at once, nothing parked; a read that has a result gets it."""
    cluster = chat_cluster()
    cluster.request("s1", "chat", "since", b"1", wait_budget_ms=0)
    cluster.request("s1", "chat", "since", b"0", wait_budget_ms=0)
    assert [r.payload for r in cluster.responses()] == [NOTHING, b"a"]
    assert cluster.server("s1").reads_parked_count == 0


def test_a_wait_budget_does_not_change_plain_requests() -> None:
    """Writes and plain reads carrying a budget run and answer as without one."""
    cluster = chat_cluster()
    cluster.request("s1", "chat", "post", b"b", wait_budget_ms=0)
    cluster.request("s1", "chat", "count", b"", wait_budget_ms=0)
    assert [r.payload for r in cluster.responses()] == [b"2", b"2"]


def test_wait_ops_must_be_read_ops() -> None:
    """A waiting op that is not a read op is a programming error."""
    with pytest.raises(AssertionError):
        PartSpec(handler=chat, initial_state=tuple, wait_ops={"post": 10})


def test_the_table_compacts_stale_deadlines() -> None:
    """Reads answered before their deadline leave heap entries that are dropped past a bound."""
    table: WaitingReads[int] = WaitingReads(reads_max=4 + 1)
    part = PartRef(session_id=SESSION, part="chat")
    kept = []
    for request_id in range(3 * HEAP_SLACK):
        read = ParkedRead(
            ref=part,
            client="c1",
            request_id=request_id,
            request=request_id,
            deadline_us=1_000_000 - request_id,
            status=0,
            result=b"",
        )
        table.park(read)
        if request_id % 1000 == 1:
            kept.append(request_id)
        else:
            table.remove(read)
    assert len(table) == len(kept) == 4
    assert len(table._heap) <= 2 * len(table) + HEAP_SLACK + 1
    assert table.due_us() == 1_000_000 - kept[-1]
    assert [read.request for read in table.take_due(10**9)] == kept[::-1]
    assert not table and table.due_us() is None
