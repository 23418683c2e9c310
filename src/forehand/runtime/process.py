"""The `forehand manager` and `forehand server` processes: a core, its listeners, its driver.

Each process binds its listeners first (so it knows its address), builds its core, and lets a
`NodeDriver` run it until SIGTERM or SIGINT. Listening: with `transport = "tls"` one TLS 1.3
listener on `listen` serves clients (no certificate) and cluster nodes (a certificate of the
cluster CA, verified); with `transport = "quic"`, clients use QUIC on the UDP port of the same
number and the TCP listener accepts only mutually authenticated cluster nodes. Once listening, the
process writes `host:port` to its `ready_file`, if it has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import importlib
import logging
import random
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from forehand._peer_log import PEER_CAUSED
from forehand.app import App
from forehand.core import (
    ManagerCore,
    ServerConfig,
    ServerCore,
    TokenSealer,
    _manager_risk,
    client_events,
    manager_events,
    server_events,
)
from forehand.core.messages import PartRef
from forehand.errors import ConfigError
from forehand.ops import ManagerOps, ServerOps, TunableRiskPolicy
from forehand.ops.logs import configure_logging as _configure_structured_logging
from forehand.runtime._quic import QUICTransport, QUICTransportConfig
from forehand.runtime._telemetry import LoadSampler, timed_parts
from forehand.runtime._tls import TLSTransport, TLSTransportConfig
from forehand.runtime.admin import handle_admin
from forehand.runtime.config import (
    WILDCARD_HOSTS,
    ManagerProcessConfig,
    ServerProcessConfig,
    parse_address,
    parse_addresses,
)
from forehand.runtime.keys import load_key_ring
from forehand.runtime.loop import stop_event
from forehand.runtime.node import NodeDriver, Route
from forehand.runtime.transport import (
    CLUSTER_LIMITS,
    CLUSTER_WIRE,
    ConnectionLimits,
    Credentials,
    Listener,
    TransportError,
)
from forehand.stores import Store, open_store
from forehand.wire import DEFAULT_CONFIG, PeerRole

__all__ = [
    "EventLogger",
    "configure_logging",
    "load_app",
    "run_manager",
    "run_server",
]

_log = logging.getLogger("forehand.runtime.process")

NOTABLE_EVENTS = frozenset(
    {
        "ServerJoined",
        "ServerLeaving",
        "ServerSuspected",
        "ServerNotHearing",
        "ServersSilent",
        "ServerDeclaredDead",
        "FailoverStarted",
        "FailoverAbandoned",
        "FailoverCompleted",
        "HandoffStarted",
        "HandoffCompleted",
        "HandoffAborted",
        "DrainProgressed",
        "RebalanceQueued",
        "ReplicasRebalanced",
        "PartsLost",
        "PartsReset",
        "PartsMovedImplicitly",
        "PartsUnreplicated",
        "MapLoaded",
        "MovesDropped",
        "ProtocolViolationDetected",
        "ReplicaDivergenceDetected",
        "ReplicatedWritesStalled",
        "ResumeRejected",
        "StateNotEncodable",
        "SessionsExpired",
        "SessionOpenRefused",
        "CredentialsPaced",
        "ServerSuperseded",
    }
)
"""Core events logged at INFO (or WARNING, `WARNING_EVENTS`); every other event is logged at
DEBUG (a server's `PrimaryInstalled` too: one per part, tens of thousands in one failover)."""
WARNING_EVENTS = frozenset(
    {
        "FailoverAbandoned",
        "PartsLost",
        "PartsReset",
        "PartsUnreplicated",
        "ServerDeclaredDead",
        "ServersSilent",
        "StateNotEncodable",
        "ServerSuperseded",
        "ReplicatedWritesStalled",
        "ServerNotHearing",
    }
)
"""Notable events an operator must act on, logged at WARNING: parts left on dead servers, lost
(their sessions ended), reset to their initial state, or without a replica; a server dead while
it led parts (a crash, not a planned stop after a drain: that one, leading none, stays at INFO,
`_below_warning`);
every server silent to the
manager; an application's state that cannot be replicated; `replicated` writes waiting with no
progress for their replicas (its end, `parts` 0, at INFO); a server whose heartbeats arrive
but that does not confirm the maps sent to it (its end, `hearing`, at INFO); two processes
running as one server (`ServerSuperseded`; the manager's node driver logs its refusal of a
cluster peer as a WARNING, once in a row)."""
PEER_CAUSED_EVENTS = frozenset(
    {
        "SessionOpenRefused",
        "ResumeRejected",
        "ProtocolViolationDetected",
        "CredentialRefused",
        "CredentialsPaced",
        "PeerRefused",
    }
)
"""Events a peer's input causes, which a flood of bad input repeats once a frame: their lines
are limited per kind (`forehand.ops.logs.PeerLogLimiter`)."""

LOGGED_ITEMS_MAX = 8
"""Items of a sequence field an event's log line shows; beyond, the count and the first ones
(a failover's promotions, a handoff's parts: thousands of items, rendered on the loop)."""
NOTABLE_EVENT_TYPES = frozenset(
    value
    for module in (client_events, server_events, manager_events)
    for name in module.__all__
    if name in NOTABLE_EVENTS and isinstance(value := getattr(module, name), type)
)
"""The event classes of every core named in `NOTABLE_EVENTS` (a name can be on more than one
side: `ProtocolViolationDetected`)."""
WARNING_EVENT_TYPES = frozenset(
    event_type for event_type in NOTABLE_EVENT_TYPES if event_type.__name__ in WARNING_EVENTS
)
"""The event classes named in `WARNING_EVENTS`."""


def configure_logging(level: str, log_format: str = "console") -> None:
    """One record per line on stderr through structlog: readable (`console`) or JSON (`json`),
    with the time, level and logger (`forehand.ops.logs`)."""
    _configure_structured_logging(level, log_format)


class EventLogger:
    """An event subscriber that logs core events (metrics subscribe the same way).

    It asks the driver only for the events its logger's level lets through when it is
    subscribed (`event_types`): every event at DEBUG, `NOTABLE_EVENT_TYPES` at INFO,
    `WARNING_EVENT_TYPES` at WARNING, none above.
    Set the level before subscribing it (the processes configure logging first); a level lowered
    later does not bring more events.
    """

    def __init__(self, node_id: str) -> None:
        self._log = logging.getLogger(f"forehand.events.{node_id}")

    @property
    def event_types(self) -> frozenset[type] | None:
        """The event classes to hand it at the logger's level now; None: every class."""
        if self._log.isEnabledFor(logging.DEBUG):
            return None
        if self._log.isEnabledFor(logging.INFO):
            return NOTABLE_EVENT_TYPES
        if self._log.isEnabledFor(logging.WARNING):
            return WARNING_EVENT_TYPES
        return frozenset()

    def __call__(self, event: object) -> None:
        name = type(event).__name__
        if name in WARNING_EVENTS and not _below_warning(event):
            level = logging.WARNING
        else:
            level = logging.INFO if name in NOTABLE_EVENTS else logging.DEBUG
        if self._log.isEnabledFor(level):
            values = _values(event)
            text = " ".join(f"{key}={value}" for key, value in values.items())
            # JSON logs carry the fields as keys of their own (`forehand.ops.logs`).
            extra: dict[str, object] = {"fields": {"core_event": name, **values}}
            if name in PEER_CAUSED_EVENTS:
                extra.update(PEER_CAUSED)
            self._log.log(level, "%s %s", name, text, extra=extra)


def _below_warning(event: object) -> bool:
    """A `WARNING_EVENTS` event that needs no action: a server declared dead while it led no
    part (drained, then stopped), the end of a replication stall, a server hearing the manager
    again."""
    if isinstance(event, server_events.ReplicatedWritesStalled):
        return event.parts == 0
    if isinstance(event, manager_events.ServerNotHearing):
        return event.hearing
    return isinstance(event, manager_events.ServerDeclaredDead) and event.primary_parts == 0


def _values(event: object) -> dict[str, object]:
    names: tuple[str, ...] = tuple(
        getattr(event, "__slots__", ()) or getattr(event, "__struct_fields__", ())
    )
    values: dict[str, object] = {}
    for name in names:
        value = getattr(event, name, None)
        if isinstance(value, tuple | list):
            items = [_shown(item) for item in value[:LOGGED_ITEMS_MAX]]
            if len(value) > LOGGED_ITEMS_MAX:
                value = f"<{len(value)} items: {', '.join(map(str, items))}, ...>"
            elif any(item is not original for item, original in zip(items, value, strict=False)):
                value = items
        else:
            value = _shown(value)
        values[name] = value
    return values


def _shown(value: object) -> object:
    """A field's value as a log line shows it: ids in hex, codes by name, a part as
    `session/part`."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, PartRef):
        return f"{value.session_id.hex()}/{value.part}"
    return value


def load_app(reference: str, app_dir: Path | None = None) -> App:
    """The `App` that `module:attribute` names, imported with `app_dir` (by default the current
    directory) first on the import path.

    ConfigError, one line, when it cannot be loaded: the reference is not `module:attribute`,
    `app_dir` is not a directory, the module cannot be found or raises while it is imported
    (any exception: the line names it and where it was raised), the module has no such
    attribute, or the attribute is not a `forehand.App` instance.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"app must be module:attribute, got {reference!r}")
    if app_dir is not None and not app_dir.is_dir():
        state = "is not a directory" if app_dir.exists() else "does not exist"
        raise ConfigError(f"app_dir {app_dir} {state} (the directory the app module is in)")
    directory = str((app_dir or Path.cwd()).resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"cannot import the app module {module_name!r}: {error}") from error
    except Exception as error:
        raise ConfigError(_import_failure(module_name, error)) from error
    if not hasattr(module, attribute):
        names = ", ".join(
            sorted(name for name, value in vars(module).items() if isinstance(value, App))
        )
        found = f"its App instances: {names}" if names else "it defines no forehand.App"
        raise ConfigError(
            f"the app module {module_name!r} has no attribute {attribute!r} ({found})"
        )
    app = getattr(module, attribute)
    if app is App:
        raise ConfigError(
            f"{reference} is the class forehand.App: name an instance (app = forehand.App())"
        )
    if not isinstance(app, App):
        raise ConfigError(f"{reference} is not a forehand.App (got {type(app).__name__})")
    return app


def _import_failure(module_name: str, error: Exception) -> str:
    """One line for an app module that raised while it was imported: the error and where."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    if isinstance(error, SyntaxError) and error.filename:
        where = f" at {error.filename}:{error.lineno}"
    return f"importing the app module {module_name!r} raised {type(error).__name__}: {error}{where}"


_DEFAULT_LIMITS = ConnectionLimits()


def _frame_limits(frame_bytes_max: int, limits: ConnectionLimits) -> ConnectionLimits:
    """The [limits] of the process, with a decoder that refuses a frame over the node's
    configured `frame_bytes_max` (what its WELCOME announces) with FRAME_TOO_LARGE. Limits loaded
    from a configuration already carry that frame size (and a budget checked against it); any
    other (the default) gets it, and a budget of partial frames holding at least one frame."""
    wire = dataclasses.replace(DEFAULT_CONFIG, frame_bytes_max=frame_bytes_max)
    if limits.wire == wire:
        return limits
    budget_bytes = max(limits.partial_frames_bytes_max, wire.buffered_bytes_max)
    return dataclasses.replace(limits, wire=wire, partial_frames_bytes_max=budget_bytes)


def _tls(credentials: Credentials, limits: ConnectionLimits) -> TLSTransport:
    return TLSTransport(credentials, config=TLSTransportConfig(limits=limits))


def _quic(credentials: Credentials, limits: ConnectionLimits) -> QUICTransport:
    # A stream's window must hold one whole frame.
    stream_window_bytes = max(_QUIC_DEFAULTS.stream_window_bytes, limits.wire.buffered_bytes_max)
    return QUICTransport(
        credentials,
        config=dataclasses.replace(
            _QUIC_DEFAULTS,
            limits=limits,
            stream_window_bytes=stream_window_bytes,
            connection_window_bytes=max(
                _QUIC_DEFAULTS.connection_window_bytes, stream_window_bytes
            ),
        ),
    )


_QUIC_DEFAULTS = QUICTransportConfig()


def cluster_transport(credentials: Credentials) -> TLSTransport:
    """The transport of a node's cluster links: mutual TLS with the cluster bounds
    (`CLUSTER_WIRE`: a whole map or a failover's delta is one cluster message)."""
    return TLSTransport(credentials, config=TLSTransportConfig(limits=CLUSTER_LIMITS))


async def _listen(
    transport_name: str,
    credentials: Credentials,
    host: str,
    port: int,
    *,
    frame_bytes_max: int,
    limits: ConnectionLimits = _DEFAULT_LIMITS,
) -> list[Listener]:
    """The listeners of a node (see the module docstring); the first one's port is the port.
    Connections clients use decode with the node's `frame_bytes_max`; cluster connections use
    `CLUSTER_WIRE` (32 MiB), since cluster messages (a whole map, a failover's delta, log batches,
    snapshots) are not bounded by it: with QUIC they have a TLS listener of their own, with `tls`
    the one listener picks by the peer's certificate (clients present none). `limits` bound
    the connections clients make (the process's [limits])."""
    limits = _frame_limits(frame_bytes_max, limits)
    try:
        if transport_name == "tls":
            listener = await _tls(credentials, limits).listen(
                host, port, peer_role=None, certified_peer_wire=CLUSTER_WIRE
            )
            return [listener]
        cluster = await cluster_transport(credentials).listen(
            host, port, peer_role=PeerRole.CLUSTER_NODE, require_client_certificate=True
        )
        try:
            quic = await _quic(credentials, limits).listen(
                host, cluster.port, peer_role=PeerRole.CLIENT
            )
        except TransportError:
            await cluster.close()
            raise
        return [cluster, quic]
    except TransportError as error:
        # A transport's listen error already says "cannot listen on host:port: why".
        raise ConfigError(str(error)) from error


def _write_ready(path: Path | None, host: str, port: int) -> None:
    if path is None:
        return
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(f"{host}:{port}\n", encoding="utf-8")
    temporary.replace(path)


async def _serve_until_stopped(
    driver: NodeDriver,
    listeners: Sequence[Listener],
    ready: Path | None,
    stop: asyncio.Event | None,
    started: Callable[[], Awaitable[None]] | None = None,
) -> None:
    own_stop, remove = stop_event(stop)
    try:
        driver.start()
        for listener in listeners:
            driver.serve(listener)
        if started is not None:
            await started()
        _write_ready(ready, listeners[0].host, listeners[0].port)
        await own_stop.wait()
    finally:
        remove()
        _log.info("%s stopping", driver.core.node_id)
        if isinstance(driver.core, ServerCore):
            # Parked waiting reads are answered "nothing yet" before the connections close:
            # each client calls again, wherever the part goes next.
            driver.command(_answer_waiting_reads)
        await driver.close()
        for listener in listeners:
            await listener.close()


def _answer_waiting_reads(core: ServerCore, now_us: int) -> None:
    core.answer_waiting_reads(now_us=now_us)


async def run_manager(
    config: ManagerProcessConfig, *, stop: asyncio.Event | None = None, store: Store | None = None
) -> None:
    """Run the Session Manager until SIGTERM/SIGINT (or until `stop` is set).

    With an etcd store (and no `store` given), the process campaigns for leadership and runs
    as the manager, on a fenced store, only while it leads (`forehand.runtime._leader`).
    """
    if store is None and config.store.startswith("etcd://"):
        from forehand.runtime._leader import run_elected

        def term(fenced: Store, term_stop: asyncio.Event) -> Awaitable[None]:
            return run_manager(config, stop=term_stop, store=fenced)

        # A standby builds the risk policy once, so its first term does not import the models.
        await run_elected(config, term=term, stop=stop, prepare=lambda: _tunable_policy(config))
        return
    sealer = TokenSealer(load_key_ring(config.key_path), rng=random.SystemRandom())
    credentials = Credentials.for_node(config.certs_dir, config.node_id)
    _require_files(credentials)
    host, port = parse_address(config.listen, where="listen")
    store = store if store is not None else _open_store(config)
    listeners: list[Listener] = []
    ops: ManagerOps | None = None
    try:
        listeners = await _listen(
            config.transport,
            credentials,
            host,
            port,
            frame_bytes_max=config.core.frame_bytes_max,
            limits=config.limits,
        )
        policy = _tunable_policy(config)
        core = ManagerCore(
            config=config.core,
            placement_config=config.placement,
            sealer=sealer,
            rng=random.SystemRandom(),
            now_us=time.time_ns() // 1000,
            risk_policy=policy,
        )
        driver = NodeDriver(
            core,
            resolve=lambda node: _manager_route(core, node),
            cluster_transport=cluster_transport(credentials),
            store=store,
            config=config.driver,
            admin_ids=config.admin_ids,
            admin_handler=lambda peer, body: handle_admin(driver, body),
            frame_bytes_max=config.core.frame_bytes_max,
            idle_timeout_ms=config.core.idle_timeout_ms,
        )
        driver.subscribe(EventLogger(config.node_id))
        ops = ManagerOps(driver, config, policy, listeners)
        _log.info(
            "manager %s listening on %s:%d (%s), %s",
            config.node_id,
            listeners[0].host,
            listeners[0].port,
            config.transport,
            _sealing(sealer),
        )
        started_ops = ops.start

        async def started() -> None:
            # The members' silence while the manager's loop stalls is not theirs (Membership).
            driver.watch_stalls(
                lambda stalled_us: driver.command(
                    lambda manager, now_us: manager.excuse_stall(
                        stalled_us=stalled_us, now_us=now_us
                    )
                )
            )
            await started_ops()

        await _serve_until_stopped(driver, listeners, config.ready_file, stop, started)
    finally:
        if ops is not None:
            await ops.close()
        for listener in listeners:
            await listener.close()
        store.close()


def _tunable_policy(config: ManagerProcessConfig) -> TunableRiskPolicy:
    """The core's risk policy, its settings changeable through the admin API."""
    make = getattr(_manager_risk, "make_risk_policy", None)
    seed = random.SystemRandom().getrandbits(64)

    def build(core_config: Any) -> Any:
        if make is not None:
            return make(core_config, random.Random(seed))
        return _manager_risk.ThresholdRiskPolicy(config=core_config)

    return TunableRiskPolicy(config.core, build=build)


def _open_store(config: ManagerProcessConfig) -> Store:
    if config.store == "memory":
        return open_store("memory")
    try:
        return open_store("sqlite", path=config.store_path)
    except Exception as error:
        raise ConfigError(f"cannot open the store {config.store_path}: {error}") from error


def _require_files(credentials: Credentials) -> None:
    for path in (credentials.certificate_path, credentials.private_key_path):
        if path is not None and not path.is_file():
            raise ConfigError(
                f"missing {path}: run `forehand certs` for node {credentials.node_id}"
            )


def _manager_route(core: ManagerCore, node: str) -> list[Route]:
    """Where the manager reaches a server: the address it announced."""
    member = core.membership.get(node)
    address = member.address if member is not None else ""
    if not address and core.shard_map is not None:
        try:
            address = core.shard_map.server(node).address
        except KeyError:
            address = ""
    return _route(node, address)


def _route(node: str, address: str | None) -> list[Route]:
    if not address:
        return []
    try:
        host, port = parse_address(address, where=f"address of {node}", dialable=True)
    except ConfigError:
        return []
    return [Route(host=host, port=port, server_id=node, cluster=True)]


def _sealing(sealer: TokenSealer) -> str:
    """Which cluster key the node seals with, for its start line: during a rotation the
    operator reads each node's log for it."""
    ring = sealer.key_ring
    held = ", ".join(map(str, ring.key_ids))
    return f"sealing with cluster key {ring.current_key_id} (holds {held})"


async def run_server(
    config: ServerProcessConfig, app: App | None = None, *, stop: asyncio.Event | None = None
) -> None:
    """Run one server with `app` (by default the one `config.app` names) until stopped."""
    if app is None:
        app = load_app(config.app, config.app_dir)
    parts, handler_clock = timed_parts(app.part_specs())
    sealer = TokenSealer(load_key_ring(config.key_path), rng=random.SystemRandom())
    credentials = Credentials.for_node(config.certs_dir, config.server_id)
    _require_files(credentials)
    host, port = parse_address(config.listen, where="listen")
    manager_addresses = parse_addresses(config.manager, where="manager", dialable=True)
    frame_bytes_max = (config.core or ServerConfig(server_id=config.server_id)).frame_bytes_max
    listeners = await _listen(
        config.transport,
        credentials,
        host,
        port,
        frame_bytes_max=frame_bytes_max,
        limits=config.limits,
    )
    try:
        address = config.advertise or _advertised(host, listeners[0].port)
        incarnation = config.incarnation or time.time_ns() // 1_000_000
        core_config = config.core_config(address=address, incarnation=incarnation)
        core = ServerCore(config=core_config, parts=parts, sealer=sealer, rng=random.SystemRandom())
        # Several managers (etcd): only the leader listens, so a failed connect moves on.
        manager_route = [
            Route(host=manager_host, port=manager_port, server_id=config.manager_id, cluster=True)
            for manager_host, manager_port in manager_addresses
        ]

        def resolve(node: str) -> list[Route]:
            if node == config.manager_id:
                return manager_route
            return _route(node, core.server_address(node))

        driver = NodeDriver(
            core,
            resolve=resolve,
            cluster_transport=cluster_transport(credentials),
            config=config.driver,
            frame_bytes_max=core_config.frame_bytes_max,
            idle_timeout_ms=core_config.idle_timeout_ms,
            elected_peers=(config.manager_id,),
        )
        driver.subscribe(EventLogger(config.server_id))
        sampler = LoadSampler(driver, config.load_report_interval_ms, handler_clock=handler_clock)
        driver.subscribe(sampler)
        # Prometheus metrics cost a few microseconds per core event; with `/metrics` off
        # (`metrics_port = -1`) nothing could read them, so they are not kept.
        ops = ServerOps(driver, config, listeners) if config.metrics_port >= 0 else None
        _log.info(
            "server %s (incarnation %d) listening on %s, app %s, parts %s, %s",
            config.server_id,
            incarnation,
            address,
            config.app,
            ", ".join(parts),
            _sealing(sealer),
        )
        # The caller's stop, or one that SIGINT sets, and SIGTERM once the server has left
        # (`_Leave`); a superseded server sets it too.
        leave = None
        if stop is None:
            stop = asyncio.Event()
            leave = _Leave(driver, stop, config.server_id, config.leave_timeout_ms)
        superseded = _Superseded(stop)
        driver.subscribe(superseded)
        sampling = asyncio.get_running_loop().create_task(sampler.run())
        try:
            await _serve_until_stopped(
                driver, listeners, config.ready_file, stop, None if ops is None else ops.start
            )
        finally:
            if leave is not None:
                leave.close()
            if ops is not None:
                await ops.close()
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        if superseded.reason is not None:
            raise ConfigError(f"the manager stopped server {config.server_id}: {superseded.reason}")
    finally:
        for listener in listeners:
            await listener.close()


class _Leave:
    """SIGTERM stops the server the planned way: it asks the manager to drain it first
    (`ServerCore.leave`), keeps serving while its parts are handed off, and stops once the
    manager reports the drain finished (`ServerLeft`), so that its sessions move without a
    failover. It stops anyway after `leave_timeout_ms` (0: at once, as SIGINT), and at SIGINT
    or a second SIGTERM; what is left then fails over."""

    def __init__(
        self, driver: NodeDriver, stop: asyncio.Event, server_id: str, timeout_ms: int
    ) -> None:
        self._driver = driver
        self._stop = stop
        self._server_id = server_id
        self._timeout_ms = timeout_ms
        self._deadline: asyncio.TimerHandle | None = None
        self._last: server_events.LeaveProgressed | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGTERM, self.terminate)
        self._loop.add_signal_handler(signal.SIGINT, stop.set)
        driver.subscribe(self)

    def terminate(self) -> None:
        """SIGTERM: leave, or stop at once when leaving is off or under way already."""
        if self._timeout_ms <= 0 or self._deadline is not None or self._stop.is_set():
            if self._deadline is not None and not self._stop.is_set():
                _log.warning(
                    "%s leaving: SIGTERM again, stopping at once%s",
                    self._server_id,
                    self._left_text(),
                )
            self._stop.set()
            return
        _log.info(
            "%s leaving: its parts go to the other servers before it stops (at most %g s;"
            " SIGINT or another SIGTERM stops it at once)",
            self._server_id,
            self._timeout_ms / 1000,
        )
        self._deadline = self._loop.call_later(self._timeout_ms / 1000, self._timed_out)
        self._driver.command(_leave)

    def _timed_out(self) -> None:
        _log.warning(
            "%s leaving: stopping after leave_timeout_ms (%d)%s",
            self._server_id,
            self._timeout_ms,
            self._left_text(),
        )
        self._stop.set()

    def _left_text(self) -> str:
        """What stopping now leaves behind, as far as the manager's last report said."""
        last = self._last
        if last is None:
            return " with no word from the manager on its drain (is it reachable?)"
        if last.roles_left:
            return (
                f" with {last.roles_left} role(s) left ({last.primaries_left} led), which fail over"
            )
        return (
            " with no role left, while its last handoffs were still in their backup period"
            " (clients that had not switched yet relocate)"
        )

    def __call__(self, event: object) -> None:
        if isinstance(event, server_events.LeaveProgressed):
            self._last = event
            waiting = (
                f", {event.roles_waiting} waiting for another server to take them"
                if event.roles_waiting
                else ""
            )
            _log.info(
                "%s leaving: %d role(s) left, %d of them led%s",
                self._server_id,
                event.roles_left,
                event.primaries_left,
                waiting,
            )
        elif isinstance(event, server_events.ServerLeft):
            if event.roles_left:
                _log.warning(
                    "%s leaving: %d role(s) (%d led) have nowhere to go; stopping with them",
                    self._server_id,
                    event.roles_left,
                    event.primaries_left,
                )
            elif event.failed_over:
                _log.warning(
                    "%s left: the manager declared it dead while it was leaving and failed "
                    "what it held over; stopping",
                    self._server_id,
                )
            else:
                _log.info("%s left: every part was handed off; stopping", self._server_id)
            self._stop.set()

    def close(self) -> None:
        """Remove the signal handlers and the deadline."""
        for number in (signal.SIGTERM, signal.SIGINT):
            self._loop.remove_signal_handler(number)
        if self._deadline is not None:
            self._deadline.cancel()


def _leave(core: ServerCore, now_us: int) -> None:
    core.leave(now_us=now_us)


class _Superseded:
    """Stops the server when the manager says another process runs under its id
    (`ServerSuperseded`): two processes as one server replaced each other's connection to the
    manager in turn, and each replacement cost a failover."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.reason: str | None = None
        self._stop = stop

    def __call__(self, event: object) -> None:
        if isinstance(event, server_events.ServerSuperseded) and self.reason is None:
            self.reason = event.reason
            self._stop.set()


def _advertised(host: str, port: int) -> str:
    if host in WILDCARD_HOSTS or not host:
        raise ConfigError("listening on a wildcard address needs `advertise = host:port`")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
