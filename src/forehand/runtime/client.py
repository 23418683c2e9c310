"""The client SDK: `connect`, `Client`, `Session`, over a `ClientCore` run by a `NodeDriver`.

    async with forehand.connect(["127.0.0.1:7000"], ca="certs/ca.pem") as client:
        session = await client.open_session(parts=["auth", "cart"])
        total = await session.call("cart", "add", {"item": "apple"})
        session.on_handoff(lambda event: print(event.kind, event.parts, event.target))
        saved = session.snapshot()          # bytes: persist them to resume after a restart
        await session.close()

    async with forehand.connect(...) as client:   # later, in a new process
        session = await client.resume_session(saved)

Payloads and results are Python values encoded with msgspec msgpack. A call that the server
answers with a failure status raises `CallError` (`AppError` for APP_ERROR, with the handler's
message); one that gets no answer at all (timeout, retries or placement lookups exhausted)
raises `RequestFailedError`, and `SessionClosedError` when the session closed first. One that
cannot be sent (a part the session did not open, a payload msgspec cannot encode, a request over
`frame_bytes_max`) raises `LocalProtocolError` from the call itself, nothing sent. Handoffs,
redirects and failovers are invisible to callers: the client core re-sends unanswered requests
with the same ids, and the servers' dedup tables make each execute once. They are visible only
as `HandoffEvent`s, through `Session.on_handoff` callbacks and the `Session.handoffs()` iterator.

Every server's certificate is verified against the cluster CA for the server id the manager
named; the client presents none. The client follows a HANDOFF only from an authenticated
connection, never to an older map version and never to a server the manager did not name.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import msgspec

from forehand.app import NOT_ENCODABLE, ErrorBody, decode_error_body
from forehand.core import ClientConfig, ClientCore, RouteState
from forehand.core import client_events as events
from forehand.errors import ConfigError, ForehandError, LocalProtocolError
from forehand.runtime._telemetry import PathSampler
from forehand.runtime.config import TRANSPORTS, parse_address
from forehand.runtime.node import DriverConfig, NodeDriver, Route
from forehand.runtime.transport import Credentials, create_transport
from forehand.wire import Placement, ReasonCode, ResponseStatus

__all__ = [
    "AppError",
    "CallError",
    "Client",
    "ForehandError",
    "HandoffEvent",
    "HandoffEventKind",
    "PartPlacement",
    "RequestFailedError",
    "ResultDecodeError",
    "Session",
    "SessionClosedError",
    "SessionOpenError",
    "SnapshotError",
    "connect",
]

_log = logging.getLogger("forehand.client")

T = TypeVar("T")
HANDOFF_EVENTS_BUFFERED_MAX = 1024
"""Handoff events a session keeps for `handoffs()` iterators that lag; the oldest go first."""
SNAPSHOT_FORMAT_VERSION = 1
"""The first field of `Session.snapshot()` bytes."""
CLOSE_POLL_S = 0.01
"""How often `Client.close` looks whether the CLOSE_SESSIONs it waits for went out."""
_encoder = msgspec.msgpack.Encoder()


class CallError(ForehandError):
    """The server answered a call with a failure status."""

    def __init__(self, status: ResponseStatus, body: ErrorBody) -> None:
        super().__init__(f"{status.name}: {body.error}")
        self.status = status
        """The response status."""
        self.message = body.error
        """What went wrong, as the server put it."""
        self.detail = body.detail
        """What the handler attached (`HandlerError.detail`)."""


class AppError(CallError):
    """The handler failed (APP_ERROR): it raised `HandlerError`, or something else."""


class RequestFailedError(ForehandError):
    """A call got no answer: timed out, ran out of retries or of placement lookups."""

    def __init__(self, why: events.RequestFailedWhy, attempts: int) -> None:
        detail = f"request failed: {why.value} after {attempts} attempt(s)"
        if why is events.RequestFailedWhy.SERVERS_LOST:
            detail += (
                ": each server it was sent to was lost while it waited there, and it was not "
                "sent to another (a handler that blocks the event loop past the manager's "
                "failure timeout does this; it may have been executed)"
            )
        super().__init__(detail)
        self.why = why
        """Which bound ran out."""
        self.attempts = attempts
        """How many times the request was sent."""


class ResultDecodeError(ForehandError):
    """A call's answer did not decode as the `result_type` asked for (or at all). The call was
    executed: only reading its result failed."""


class SnapshotError(ForehandError, ValueError):
    """Bytes `Client.resume_session` cannot read as a session snapshot (of this format)."""


class SessionOpenError(ForehandError):
    """The manager did not open the session."""


class SessionClosedError(ForehandError):
    """The session (or the client) is closed."""


class HandoffEventKind(enum.Enum):
    """What happened to the placement of some of a session's parts."""

    STARTED = "started"
    """A server sent HANDOFF; the client is resuming at a target (the old server still serves)."""
    COMPLETED = "completed"
    """The target answered RESUME_OK: the parts are served there now."""
    ABANDONED = "abandoned"
    """No target took the parts; the client asks the manager where they are."""
    REDIRECTED = "redirected"
    """A server answered REDIRECT with a newer placement."""
    RELOCATED = "relocated"
    """After a lost connection (a crash, say) or an abandoned handoff, the manager told the
    client the new primary."""
    MOVED = "moved"
    """A newer map answer placed an active part on another server before any HANDOFF for it
    reached the client (a planned move published first, as in a drain); nothing was lost."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffEvent:
    """One change of where a session's parts are served, for the application's information."""

    kind: HandoffEventKind
    """What happened."""
    session_id: bytes
    """The session."""
    parts: tuple[str, ...]
    """The parts concerned."""
    source: str | None
    """The server the parts left (or are leaving), when known."""
    target: str | None
    """The server they go to, when known."""
    map_version: int
    """The shard-map version of the new placement."""
    reason: ReasonCode = ReasonCode.UNSPECIFIED
    """Why the server moved them (HANDOFF only)."""
    duration_us: int = 0
    """From the HANDOFF (or from when the client found the connection lost: at once for a
    killed server over TLS or QUIC, after its pings' timeout for an unreachable host) to the new
    server, when complete."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartPlacement:
    """Where one part is served, as the client knows it."""

    state: RouteState
    """ACTIVE, HANDING_OFF, LOCATING, ..."""
    primary: str
    """The server requests go to."""
    backups: tuple[str, ...]
    """Known backups, in promotion order."""
    map_version: int
    """The shard-map version of this placement."""


class _Saved(msgspec.Struct, frozen=True, array_like=True):
    """The bytes of `Session.snapshot()`."""

    version: int
    session_id: bytes
    credential: bytes
    map_version: int
    placements: tuple[Placement, ...]


class Session:
    """One session: calls to its parts, its handoff events, its snapshot."""

    def __init__(self, client: Client, session_id: bytes, parts: tuple[str, ...]) -> None:
        self._client = client
        self._id = session_id
        self._parts = parts
        self._callbacks: list[Callable[[HandoffEvent], None]] = []
        self._events: deque[HandoffEvent] = deque(maxlen=HANDOFF_EVENTS_BUFFERED_MAX)
        self._event_count = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self._closed_why = "the session is closed"

    @property
    def id(self) -> bytes:
        """The session id (16 bytes, a UUIDv7)."""
        return self._id

    @property
    def parts(self) -> tuple[str, ...]:
        """The session's parts."""
        return self._parts

    @property
    def closed(self) -> bool:
        """Whether `close()` ran (or the client closed)."""
        return self._closed

    async def call(
        self,
        part: str,
        op: str,
        payload: Any = None,
        *,
        result_type: type[T] | Any = Any,
        timeout_ms: int | None = None,
    ) -> T:
        """Run `op` on `part` with `payload`; return the handler's result as `result_type`.

        `timeout_ms` (1 to 600,000) replaces the client's `request_timeout_ms` for this call, and
        tells the server how long the call can still wait (its wait budget, less the config's
        `wait_budget_margin_ms`): a waiting read (`App.handler(..., wait_ms=)`) answers None
        when its `wait_ms` or that budget passes with nothing new, so by `timeout_ms`.

        Raises `CallError` (`AppError`) when the server answers with a failure status,
        `ResultDecodeError` when its result does not decode as `result_type` (executed all the
        same),
        `RequestFailedError` when no answer came, `SessionClosedError` after `close()`, and
        `LocalProtocolError` at once, nothing sent, for a call the client cannot issue (an unknown
        part, a payload msgspec cannot encode, an op or payload its REQUEST frame cannot hold,
        `BackpressureError` past `inflight_requests_max`).
        """
        if self._closed:
            raise SessionClosedError(self._closed_why)
        body = _encode_payload(part, op, payload)
        # One coroutine from the call to its answer: this is the SDK's per-call path, so it does
        # not go through `Client._issue` (two more coroutines per call).
        client = self._client
        request_id = client._send_call(self._id, part, op, body, timeout_ms)
        answer = client._early.pop(request_id, None) if client._early else None
        if answer is None:
            future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            client._pending[request_id] = future
            answer = await future
        if type(answer) is not events.ResponseReceived:
            failure = _call_failure(answer)
            if isinstance(failure, SessionClosedError) and self._closed:
                # Who closed it (a peer's CLOSE_SESSION), when the session's end said so.
                raise SessionClosedError(self._closed_why)
            raise failure
        status = answer.status
        if status is ResponseStatus.OK:
            try:
                return cast(T, msgspec.msgpack.decode(answer.payload, type=result_type))
            except msgspec.DecodeError as undecodable:
                # ValidationError is one: a result that is not a `result_type`.
                raise ResultDecodeError(
                    f"the result of {part}.{op} does not decode as {result_type!r}: "
                    f"{undecodable} (the call was executed)"
                ) from undecodable
        error = decode_error_body(answer.payload)
        if status is ResponseStatus.APP_ERROR:
            raise AppError(status, error)
        raise CallError(status, error)

    def on_handoff(self, callback: Callable[[HandoffEvent], None]) -> None:
        """Call `callback(event)` on the loop for every handoff event of this session."""
        self._callbacks.append(callback)

    async def handoffs(self) -> AsyncIterator[HandoffEvent]:
        """Handoff events from now on, until the session closes (at most the last
        HANDOFF_EVENTS_BUFFERED_MAX are kept for a slow reader)."""
        wanted = self._event_count
        kept = self._events
        while not self._closed:
            first = self._event_count - len(kept)
            if wanted < self._event_count:
                wanted = max(wanted, first)
                event = kept[wanted - first]
                wanted += 1
                yield event
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def placements(self) -> dict[str, PartPlacement]:
        """Where each part is served now, as far as the client knows (SessionClosedError once
        the session closed)."""
        if self._closed:
            raise SessionClosedError(self._closed_why)
        core = self._client._core
        result = {}
        for part in self._parts:
            view = core.route(self._id, part)
            result[part] = PartPlacement(
                state=view.state,
                primary=view.primary,
                backups=view.backups,
                map_version=view.map_version,
            )
        return result

    def snapshot(self) -> bytes:
        """What to persist to take the session back after a client restart
        (`Client.resume_session`): its id, its credential (a secret) and its placements.

        The credential is the newest: the client renews it while it holds the session (every
        `ClientConfig.credential_renew_interval_ms`, or half the credential lifetime the cluster
        states in SETTINGS if that is shorter), and a snapshot older than the cluster's
        `credential_lifetime_ms` (24 hours) can no longer take the session back, so persist it
        again from time to time. SessionClosedError once the session closed (there is nothing
        left to take back)."""
        if self._closed:
            raise SessionClosedError(self._closed_why)
        snapshot = self._client._core.session_snapshot(self._id)
        return _encoder.encode(
            _Saved(
                version=SNAPSHOT_FORMAT_VERSION,
                session_id=snapshot.session_id,
                credential=snapshot.credential,
                map_version=snapshot.map_version,
                placements=snapshot.placements,
            )
        )

    async def close(self) -> None:
        """End the session: the servers and the manager forget it; unanswered calls fail."""
        if self._closed:
            return
        self._client._close_session(self)

    def _handoff(self, event: HandoffEvent) -> None:
        self._events.append(event)
        self._event_count += 1
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception as error:
                # To the loop's exception handler, as asyncio does for a failed callback: by
                # default it prints the traceback, where this package's own logger (a
                # NullHandler until the application configures logging) kept it hidden.
                asyncio.get_running_loop().call_exception_handler(
                    {
                        "message": f"on_handoff callback {callback!r} failed on {event!r}",
                        "exception": error,
                    }
                )
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _mark_closed(self, why: str | None = None) -> None:
        self._closed = True
        if why is not None:
            self._closed_why = why
        self._wake()


class Client:
    """A client of one Forehand cluster; use `connect(...)` and `async with`."""

    def __init__(
        self,
        manager_endpoints: Sequence[tuple[str, int]],
        *,
        ca: Path,
        transport: str,
        manager_id: str,
        config: ClientConfig,
        driver_config: DriverConfig,
        client_id: bytes,
    ) -> None:
        self._manager_routes = [
            Route(host=host, port=port, server_id=manager_id, cluster=False)
            for host, port in manager_endpoints
        ]
        self._manager_id = manager_id
        self._core = ClientCore(config=config, client_id=client_id, rng=random.SystemRandom())
        credentials = Credentials(ca_certificate_path=ca)
        self._driver = NodeDriver(
            self._core,
            resolve=self._resolve,
            client_transport=create_transport(transport, credentials=credentials),
            config=driver_config,
        )
        self._driver.subscribe(self._on_event)
        self._path_sampler = PathSampler(
            self._driver, config.ping_interval_ms, manager_id=manager_id
        )
        self._path_sampling: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._early: dict[int, object] = {}
        self._send_handle: asyncio.Handle | None = None
        self._sessions: dict[bytes, Session] = {}
        self._started = False
        self._closed = False
        self._close_timeout_s = driver_config.close_timeout_ms / 1000

    @property
    def client_id(self) -> bytes:
        """This client's 16-byte id (sent in HELLO)."""
        return self._core.client_id

    @property
    def core(self) -> ClientCore:
        """The client core, for inspection (tests, diagnostics); do not drive it directly."""
        return self._core

    async def start(self) -> None:
        """Start the driver; connections open when the first session needs them."""
        if not self._started:
            self._started = True
            self._driver.start()
            self._path_sampling = asyncio.get_running_loop().create_task(self._path_sampler.run())

    async def close(self) -> None:
        """Close every connection; sessions stay open on the servers (resume them later).

        A session closed just before (`Session.close`) whose connection to the manager or a
        server was still opening is told there first: up to the driver's `close_timeout_ms`
        for that connection to open and take its CLOSE_SESSION."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._started:
                deadline_s = asyncio.get_running_loop().time() + self._close_timeout_s
                while self._core.closes_unsent() and asyncio.get_running_loop().time() < deadline_s:
                    await asyncio.sleep(CLOSE_POLL_S)
        finally:
            # Cancelled while waiting, the client still closes (a second close returns at once).
            await self._teardown()

    async def _teardown(self) -> None:
        for session in self._sessions.values():
            session._mark_closed("the client is closed")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SessionClosedError("the client closed"))
        self._pending.clear()
        if self._send_handle is not None:
            self._send_handle.cancel()
            self._send_handle = None
        if self._path_sampling is not None:
            self._path_sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._path_sampling
        if self._started:
            await self._driver.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def open_session(self, parts: Sequence[str]) -> Session:
        """Open a new session with `parts` at the manager; its parts are placed on servers.

        LocalProtocolError at once for parts the manager would refuse (a string rather than a
        sequence of names, none, a repeated one, a name that is not a part name)."""
        if isinstance(parts, str | bytes):
            raise LocalProtocolError(f"parts must be a sequence of part names, got {parts!r}")
        names = tuple(parts)
        answer = await self._issue(lambda core, now_us: core.open_session(names, now_us=now_us))
        if isinstance(answer, events.SessionOpenFailed):
            raise SessionOpenError(answer.detail)
        assert isinstance(answer, events.SessionEstablished)
        session = Session(self, answer.session_id, answer.parts)
        self._sessions[answer.session_id] = session
        return session

    async def resume_session(self, snapshot: bytes) -> Session:
        """Take back a session from `Session.snapshot()` bytes (after a client restart).

        Its credential goes in the HELLO to each part's primary; calls wait until the server
        welcomes it, and if a server refuses it, the parts are located through the manager. A
        credential the manager refuses too (expired: a snapshot older than the cluster's
        credential lifetime; or altered) closes the session: its calls raise
        `SessionClosedError` with the manager's reason. `SnapshotError` at once for bytes that
        are not a snapshot.
        """
        self._check_open()
        try:
            saved = msgspec.msgpack.decode(snapshot, type=_Saved)
        except (msgspec.DecodeError, UnicodeDecodeError) as error:
            # msgspec lets a string that is not UTF-8 escape as UnicodeDecodeError.
            raise SnapshotError(f"not a session snapshot: {error}") from error
        if saved.version != SNAPSHOT_FORMAT_VERSION:
            raise SnapshotError(f"snapshot format {saved.version} is not {SNAPSHOT_FORMAT_VERSION}")
        self._driver.command(
            lambda core, now_us: core.resume_session(
                saved.session_id,
                saved.credential,
                saved.placements,
                map_version=saved.map_version,
                now_us=now_us,
            )
        )
        session = Session(self, saved.session_id, tuple(p.part for p in saved.placements))
        self._sessions[saved.session_id] = session
        return session

    # -- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError("the client is closed")
        if not self._started:
            raise ForehandError("start the client first (use `async with forehand.connect(...)`)")

    async def _issue(self, action: Callable[[ClientCore, int], int]) -> Any:
        """Run a command that returns a request id, then wait for the event that answers it."""
        self._check_open()
        request_id = self._driver.command(action)
        early = self._early.pop(request_id, None)
        if early is not None:
            return early
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return await future

    def _send_call(
        self, session_id: bytes, part: str, op: str, payload: bytes, timeout_ms: int | None = None
    ) -> int:
        """Issue one call; its answer comes to `_answer` under the request id returned.

        The core issues it now (its id, its time, its errors are this moment's) but sends it
        with the other calls of this loop turn: one command, soon, sends them all, grouped by
        server, and drains the core once for all of them instead of once per call. The
        transport writes once per loop turn anyway; this costs one turn more.
        """
        self._check_open()
        if self._send_handle is None:
            self._send_handle = asyncio.get_running_loop().call_soon(self._send_deferred)
        return self._core.call(
            session_id,
            part,
            op,
            payload,
            now_us=self._driver.now_us(),
            defer_send=True,
            timeout_ms=timeout_ms,
        )

    def _send_deferred(self) -> None:
        self._send_handle = None
        if not self._closed:
            self._driver.command(_send_deferred_calls)

    def _close_session(self, session: Session) -> None:
        self._check_open()
        session._mark_closed()
        self._driver.command(lambda core, now_us: core.close_session(session.id, now_us=now_us))
        self._sessions.pop(session.id, None)

    def _resolve(self, node: str) -> list[Route]:
        if node == self._manager_id:
            return self._manager_routes
        endpoint = self._core.endpoint(node)
        if endpoint is None:
            return []
        return [Route(host=endpoint.host, port=endpoint.port, server_id=node, cluster=False)]

    def _answer(self, request_id: int, event: object) -> None:
        future = self._pending.pop(request_id, None)
        if future is None:
            self._early[request_id] = event
        elif not future.done():
            future.set_result(event)

    def _on_event(self, event: object) -> None:
        kind = type(event)
        if (
            kind is events.ResponseReceived
            or kind is events.RequestFailed
            or kind is events.SessionEstablished
            or kind is events.SessionOpenFailed
        ):
            self._answer(event.request_id, event)  # type: ignore[attr-defined]
        elif kind is events.SessionClosed and event.closed_by is not None:  # type: ignore[attr-defined]
            self._closed_by_peer(event)  # type: ignore[arg-type]
        else:
            handoff = _handoff_event(event)
            if handoff is not None:
                session = self._sessions.get(handoff.session_id)
                if session is not None:
                    session._handoff(handoff)
            elif _log.isEnabledFor(logging.DEBUG):
                _log.debug("%r", event)

    def _closed_by_peer(self, event: events.SessionClosed) -> None:
        """A server or the manager ended a session (CLOSE_SESSION, or the manager refusing its
        credential): its calls raise SessionClosedError naming who, and why when it said."""
        session = self._sessions.pop(event.session_id, None)
        why = f"the session was closed by {event.closed_by}"
        if event.detail:
            why = f"{why}: {event.detail}"
        _log.warning("session %s: %s", event.session_id.hex(), why)
        if session is not None:
            session._mark_closed(why)


def _send_deferred_calls(core: ClientCore, now_us: int) -> None:
    core.send_deferred(now_us=now_us)


def _encode_payload(part: str, op: str, payload: Any) -> bytes:
    """`payload` as msgpack; LocalProtocolError, naming the call and msgspec's reason, for a
    value msgspec cannot encode (an int outside 64 bits, an unsupported type)."""
    try:
        return _encoder.encode(payload)
    except NOT_ENCODABLE as error:
        raise LocalProtocolError(
            f"the call cannot be sent: the payload of {part[:80]}.{op[:80]} cannot be encoded: "
            f"{error}"
        ) from None


def _call_failure(answer: object) -> ForehandError:
    """The error a call raises when its answer is a `RequestFailed` (no answer came)."""
    assert isinstance(answer, events.RequestFailed), answer
    if answer.why is events.RequestFailedWhy.SESSION_CLOSED:
        return SessionClosedError("the session closed before the answer")
    return RequestFailedError(answer.why, answer.attempts)


def _handoff_event(event: object) -> HandoffEvent | None:
    """The application's view of a core event that changes where parts are served."""
    if isinstance(event, events.HandoffStarted):
        return HandoffEvent(
            kind=HandoffEventKind.STARTED,
            session_id=event.session_id,
            parts=event.parts,
            source=event.source,
            target=event.targets[0] if event.targets else None,
            map_version=event.map_version,
            reason=event.reason,
        )
    if isinstance(event, events.HandoffFollowed):
        return HandoffEvent(
            kind=HandoffEventKind.COMPLETED,
            session_id=event.session_id,
            parts=event.parts,
            source=event.source,
            target=event.target,
            map_version=event.map_version,
            reason=event.reason,
            duration_us=event.duration_us,
        )
    if isinstance(event, events.HandoffAbandoned):
        return HandoffEvent(
            kind=HandoffEventKind.ABANDONED,
            session_id=event.session_id,
            parts=event.parts,
            source=event.source,
            target=None,
            map_version=0,
        )
    if isinstance(event, events.PartRedirected):
        return HandoffEvent(
            kind=HandoffEventKind.REDIRECTED,
            session_id=event.session_id,
            parts=(event.part,),
            source=event.source,
            target=event.target,
            map_version=event.map_version,
        )
    if isinstance(event, events.PartRelocated):
        return HandoffEvent(
            kind=HandoffEventKind.RELOCATED if event.lost else HandoffEventKind.MOVED,
            session_id=event.session_id,
            parts=(event.part,),
            source=event.previous,
            target=event.server,
            map_version=event.map_version,
            duration_us=event.duration_us,
        )
    return None


def connect(
    manager_endpoints: str | Sequence[str],
    *,
    ca: str | Path,
    transport: str = "tls",
    manager_id: str = "manager",
    config: ClientConfig | None = None,
    driver_config: DriverConfig | None = None,
    client_id: bytes | None = None,
) -> Client:
    """A client of the cluster whose manager listens at `manager_endpoints`: `host:port`, a
    list of them, or a string of them separated by commas, as `forehand server --manager` takes.

    `ca` is the cluster CA certificate (`ca.pem` of `forehand certs`), against which every
    server's certificate is verified; `transport` is `tls` (TLS 1.3 over TCP) or `quic`.
    Use it as `async with connect(...) as client:` (or `await client.start()` and `close()`).
    """
    endpoints = (
        [part.strip() for part in manager_endpoints.split(",")]
        if isinstance(manager_endpoints, str)
        else list(manager_endpoints)
    )
    if not endpoints:
        raise ConfigError("connect needs at least one manager endpoint")
    addresses = [parse_address(text, where="manager endpoint", dialable=True) for text in endpoints]
    if transport not in TRANSPORTS:
        raise ConfigError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    ca_path = Path(ca)
    if ca_path.is_dir():
        raise ConfigError(
            f"CA certificate {ca_path} is a directory: name the file (its ca.pem, made by "
            "forehand certs)"
        )
    if not ca_path.is_file():
        raise ConfigError(f"CA certificate {ca_path} does not exist")
    try:
        ssl.create_default_context(cafile=str(ca_path))
    except (ssl.SSLError, ValueError) as error:
        raise ConfigError(f"CA certificate {ca_path} holds no PEM certificate: {error}") from None
    client_config = config if config is not None else ClientConfig(manager_node_id=manager_id)
    if client_config.prewarm_probe_targets is None:
        # On unless the application said otherwise: a config passed for its timeouts turned
        # the probes of potential handoff targets off before.
        client_config = replace(client_config, prewarm_probe_targets=True)
    if client_config.manager_node_id != manager_id:
        raise ConfigError("ClientConfig.manager_node_id must equal manager_id")
    return Client(
        addresses,
        ca=ca_path,
        transport=transport,
        manager_id=manager_id,
        config=client_config,
        driver_config=driver_config or _client_driver_config(client_config),
        client_id=client_id if client_id is not None else os.urandom(16),
    )


def _client_driver_config(config: ClientConfig) -> DriverConfig:
    """Connections to servers are pinged every `ping_interval_ms`; five missed answers mean the
    server is stopped or unreachable, and the client relocates its parts."""
    return DriverConfig(silence_timeout_ms=5 * config.ping_interval_ms)
