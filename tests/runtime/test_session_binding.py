"""A real `forehand server` serves a session only on connections that proved it (its credential).

A manager and one server run as processes (TLS). An SDK client opens a session and keeps
calling it. A second, raw TLS connection that knows the session id but not its credential is
answered NOT_FOUND and runs nothing, and a forged credential in RESUME is refused, while the owner
keeps being served; the same raw connection, given the session's real credential in RESUME, is
then served: the credential, not the session id, is what reaches the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec
import pytest

import forehand
from forehand.runtime.client import _Saved
from forehand.wire import (
    Frame,
    Request,
    Response,
    ResponseStatus,
    Resume,
    ResumeOk,
    ResumeReject,
    ResumeRejectReason,
    encode_frame,
)

if TYPE_CHECKING:
    from tests.runtime._cluster import Cluster, make_certs, run_async
    from tests.runtime.test_bad_input import SERVER, GoodClient, RawClient
else:
    from test_bad_input import SERVER, GoodClient, RawClient

    from _cluster import Cluster, make_certs, run_async

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A manager and one server (TLS), real processes, for the whole module."""
    directory = tmp_path_factory.mktemp("session-binding")
    running = Cluster(
        directory, certs_dir=make_certs(directory / "certs"), transport="tls", servers=(SERVER,)
    )
    running.start()
    yield running
    running.stop()


async def _until(raw: RawClient, kind: type[Frame], count: int = 1) -> list[Frame]:
    """Read until `count` frames of `kind` arrived on the raw connection; those frames."""
    while len(found := [f for f in raw.received if isinstance(f, kind)]) < count:
        assert await raw._read_some(), raw.received
    return found


def _whoami(session_id: bytes, request_id: int) -> bytes:
    request = Request(
        request_id=request_id,
        session_id=session_id,
        part="auth",
        op="whoami",
        map_version=1 << 40,
        payload=msgspec.msgpack.encode(None),
    )
    return encode_frame(request)


def test_a_session_id_without_its_credential_reaches_nothing(cluster: Cluster) -> None:
    """A raw connection with the session id only gets NOT_FOUND and RESUME_REJECT; the owner is
    served throughout; with the real credential in RESUME the same connection is served."""

    async def main() -> None:
        async with GoodClient(cluster) as good:
            (session,) = good.client._sessions.values()
            saved = msgspec.msgpack.decode(session.snapshot(), type=_Saved)
            raw = await RawClient.open(cluster)
            await raw.hello()
            raw.send(_whoami(session.id, 1))
            (refused,) = await _until(raw, Response)
            assert isinstance(refused, Response)
            assert refused.status is ResponseStatus.NOT_FOUND, refused
            assert b"not bound" in refused.payload
            forged = bytearray(saved.credential)
            forged[-1] ^= 1
            raw.send(
                encode_frame(
                    Resume(
                        session_id=session.id, token=bytes(forged), parts=("auth",), map_version=0
                    )
                )
            )
            (reject,) = await _until(raw, ResumeReject)
            assert isinstance(reject, ResumeReject)
            assert reject.reason is ResumeRejectReason.TOKEN_INVALID
            raw.send(_whoami(session.id, 2))
            second = (await _until(raw, Response, 2))[1]
            assert isinstance(second, Response)
            assert second.status is ResponseStatus.NOT_FOUND
            await good.answered_more(3)
            raw.send(
                encode_frame(
                    Resume(
                        session_id=session.id,
                        token=saved.credential,
                        parts=("auth",),
                        map_version=0,
                    )
                )
            )
            await _until(raw, ResumeOk)
            raw.send(_whoami(session.id, 3))
            served = (await _until(raw, Response, 3))[2]
            assert isinstance(served, Response)
            assert served.status is ResponseStatus.OK, served
            assert msgspec.msgpack.decode(served.payload) == "good"
            raw.writer.close()
            await good.answered_more(3)
        assert cluster.processes[SERVER].poll() is None, cluster.log(SERVER)

    run_async(main())


def test_owner_calls_are_answered_while_a_stranger_hammers_the_session(cluster: Cluster) -> None:
    """Many refused requests from a connection without the credential change nothing for the
    owner: its calls keep being answered and its state is untouched by the stranger."""

    async def main() -> None:
        async with GoodClient(cluster) as good:
            (session,) = good.client._sessions.values()
            raw = await RawClient.open(cluster)
            await raw.hello()
            for request_id in range(1, 51):
                raw.send(_whoami(session.id, request_id))
            responses = await _until(raw, Response, 50)
            assert {r.status for r in responses if isinstance(r, Response)} == {
                ResponseStatus.NOT_FOUND
            }
            await good.answered_more(3)
            raw.writer.close()
            await asyncio.sleep(0)

    run_async(main())


def test_a_tampered_snapshot_closes_its_session_at_once_and_spares_the_others(
    cluster: Cluster,
) -> None:
    """A client resumes a session from a snapshot whose credential was tampered with, then
    opens a session of its own on the same server: the new session is served (the server leaves
    the forged one unbound and keeps the connection), and a call of the resumed session raises
    SessionClosedError naming the refused credential as soon as the manager refuses it. Before,
    the server closed the connection at each HELLO, so the healthy session failed as well, and
    both calls ended at their timeout as placement-unknown."""

    async def main() -> None:
        async with cluster.connect() as owner:
            victim = await owner.open_session(["auth", "feature/video"])
            await victim.call("auth", "login", "victim")
            saved = msgspec.msgpack.decode(victim.snapshot(), type=_Saved)
        forged = bytearray(saved.credential)
        forged[-1] ^= 1
        tampered = msgspec.msgpack.encode(msgspec.structs.replace(saved, credential=bytes(forged)))
        async with cluster.connect() as client:
            resumed = await client.resume_session(tampered)
            healthy = await client.open_session(["auth", "feature/video"])
            await healthy.call("auth", "login", "healthy")
            assert await healthy.call("auth", "whoami", result_type=str) == "healthy"
            with pytest.raises(forehand.SessionClosedError, match="credential was refused"):
                await asyncio.wait_for(resumed.call("auth", "whoami"), timeout=10)
            with pytest.raises(forehand.SessionClosedError, match="credential was refused"):
                await resumed.call("auth", "whoami")
            assert await healthy.call("auth", "whoami", result_type=str) == "healthy"

    run_async(main())
