"""The SDK's calls against a real server process (TLS): a call that cannot be sent (too long, a
payload msgspec cannot encode) is refused on its own, and the calls issued in the same loop turn
are answered."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from forehand.core import ClientConfig
from forehand.errors import ForehandError, LocalProtocolError
from forehand.runtime.client import ResultDecodeError, SessionOpenError
from forehand.wire import DEFAULT_CONFIG

if TYPE_CHECKING:
    from tests.runtime._cluster import Cluster, make_certs, run_async
else:
    from _cluster import Cluster, make_certs, run_async

SERVER = "s1"
CHAT_WAIT_MS = 20_000
"""How long the cart example's `chat.since` waits (`examples.cart.app.CHAT_WAIT_MS`)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A manager and one server (TLS), real processes, for the whole module."""
    directory = tmp_path_factory.mktemp("client-calls")
    running = Cluster(
        directory, certs_dir=make_certs(directory / "certs"), transport="tls", servers=(SERVER,)
    )
    running.start()
    yield running
    running.stop()


def test_an_unsendable_call_is_refused_alone_and_its_turn_is_answered(cluster: Cluster) -> None:
    """Calls issued in one loop turn with one whose frame cannot be encoded (a payload over
    frame_bytes_max, an op name too long or empty): each bad call raises LocalProtocolError from
    the call itself, and the good calls of that turn are sent and answered (the turn's frames
    leave together, so one bad frame used to lose them all until their timeout)."""
    config = ClientConfig(ping_interval_ms=200, request_timeout_ms=5_000)
    too_long_op = "o" * (DEFAULT_CONFIG.op_name_bytes_max + 1)

    async def scenario() -> None:
        async with cluster.connect(config=config) as client:
            session = await client.open_session(parts=["auth"])
            assert await session.call("auth", "login", "dave") == "welcome dave"
            results: list[object] = list(
                await asyncio.gather(
                    session.call("auth", "whoami"),
                    session.call("auth", "login", "x" * (DEFAULT_CONFIG.frame_bytes_max + 1)),
                    session.call("auth", too_long_op),
                    session.call("auth", ""),
                    session.call("auth", "whoami"),
                    return_exceptions=True,
                )
            )
            assert results[0] == "dave" and results[4] == "dave", results
            for refused in results[1:4]:
                assert isinstance(refused, LocalProtocolError), refused
            # Nothing of the refused calls stays behind in the client.
            assert client.core.inflight_count == 0
            assert await session.call("auth", "whoami") == "dave"
            # So does an open the manager would refuse: a string (one part per letter before),
            # or a name that is not a part name (a 10 s "no answer in time" before).
            for parts in ("auth", ["Auth"], [""]):
                with pytest.raises(LocalProtocolError, match="part"):
                    await client.open_session(parts=parts)
            assert client.core.inflight_count == 0

    run_async(scenario())


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (2**64, "can't serialize ints"),
        ({"when": object()}, "Encoding objects of type object is unsupported"),
    ],
    ids=["int-over-64-bits", "unsupported-type"],
)
def test_a_payload_msgspec_cannot_encode_is_a_local_protocol_error(
    cluster: Cluster, payload: object, reason: str
) -> None:
    """A payload msgspec cannot encode raises LocalProtocolError naming the part, the op and
    msgspec's reason, as the other calls that cannot be sent do; nothing is issued, and the
    session goes on."""

    async def scenario() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(parts=["auth"])
            with pytest.raises(LocalProtocolError) as refused:
                await session.call("auth", "login", payload)
            message = str(refused.value)
            assert message.startswith("the call cannot be sent: the payload of auth.login ")
            assert reason in message, message
            assert client.core.inflight_count == 0
            assert await session.call("auth", "login", "erin") == "welcome erin"

    run_async(scenario())


def test_an_open_naming_a_part_no_server_declares_fails_at_once_saying_which(
    cluster: Cluster,
) -> None:
    """The server announced the parts its app declares, so the manager refuses a session with a
    mistyped part at once (OPEN_SESSION_REFUSED), naming it; the client's connection to the
    manager stays, and its next open succeeds. Before, the session opened, every call to the
    part failed, and each drain or handoff moving it ran to its deadline and failed over."""
    config = ClientConfig(ping_interval_ms=200, request_timeout_ms=5_000)

    async def scenario() -> None:
        async with cluster.connect(config=config) as client:
            with pytest.raises(SessionOpenError, match="the manager refused it") as refused:
                await client.open_session(parts=["auth", "crat"])
            assert "'crat'" in str(refused.value) and "auth" in str(refused.value)
            session = await client.open_session(parts=["auth"])
            assert await session.call("auth", "login", "erin") == "welcome erin"

    run_async(scenario())


def test_a_result_that_is_not_the_result_type_raises_result_decode_error(cluster: Cluster) -> None:
    """`result_type=int` on an op that answers a string: ResultDecodeError (a ForehandError)
    naming the call, and the call was executed (its state changed). Before, msgspec's own
    ValidationError escaped, which `except forehand.ForehandError` did not catch."""
    config = ClientConfig(ping_interval_ms=200, request_timeout_ms=5_000)

    async def scenario() -> None:
        async with cluster.connect(config=config) as client:
            session = await client.open_session(parts=["auth"])
            with pytest.raises(ResultDecodeError, match=r"auth\.login") as raised:
                await session.call("auth", "login", "frank", result_type=int)
            assert isinstance(raised.value, ForehandError)
            assert await session.call("auth", "whoami") == "frank"

    run_async(scenario())


def test_a_waiting_read_is_answered_by_a_later_write(cluster: Cluster) -> None:
    """`chat.since` (a waiting read of the cart example) with a `timeout_ms` beyond the client's
    `request_timeout_ms`: parked on the server, it is answered by a write that comes later, from
    another client holding the same session (taken back from its snapshot)."""
    config = ClientConfig(ping_interval_ms=200, request_timeout_ms=1_000)

    async def scenario() -> None:
        async with cluster.connect(config=config) as client:
            session = await client.open_session(parts=["auth", "chat"])
            assert await session.call("chat", "post", "first") == 0
            waiter: asyncio.Future[object] = asyncio.ensure_future(
                session.call("chat", "since", 1, timeout_ms=CHAT_WAIT_MS + 5_000)
            )
            await asyncio.sleep(1.5)  # past request_timeout_ms: only a parked read is unanswered
            assert not waiter.done()
            async with cluster.connect(config=config) as other:
                resumed = await other.resume_session(session.snapshot())
                assert await resumed.call("chat", "post", "second") == 1
            assert await asyncio.wait_for(waiter, 10) == {"messages": ["second"], "next": 2}
            assert await session.call("chat", "since", 0, timeout_ms=CHAT_WAIT_MS + 5_000) == {
                "messages": ["first", "second"],
                "next": 2,
            }

    run_async(scenario())


def test_a_waiting_read_with_a_timeout_below_its_wait_returns_none(cluster: Cluster) -> None:
    """A call of `chat.since` whose `timeout_ms` is shorter than the op's `wait_ms` sends its
    wait budget in the REQUEST: the server answers "nothing yet" within it, and the call returns
    None rather than failing with a timeout; the session's next call is served as usual."""
    config = ClientConfig(ping_interval_ms=200, wait_budget_margin_ms=300)

    async def scenario() -> None:
        async with cluster.connect(config=config) as client:
            session = await client.open_session(parts=["auth", "chat"])
            next_index = await session.call("chat", "post", "hello") + 1
            assert await session.call("chat", "since", next_index, timeout_ms=1_200) is None
            assert await session.call("chat", "since", next_index - 1, timeout_ms=1_200) == {
                "messages": ["hello"],
                "next": next_index,
            }

    run_async(scenario())
