"""NodeDriver's event routing: a subscriber gets the event classes it declared (or every event),
and the runtime's and ops' subscribers, routed, account for exactly what they did when every
event of their core was handed to them."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import random
import typing
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry

from forehand.core import (
    KeyRing,
    Outbound,
    ServerConfig,
    ServerCore,
    TokenSealer,
    client_events,
    manager_events,
    server_events,
)
from forehand.core.messages import PartRef
from forehand.ops import OpsHub, ServerMetrics, audit, hub, metrics
from forehand.runtime._telemetry import LoadSampler
from forehand.runtime.node import EVENT_ROUTES_MAX, NodeDriver
from forehand.runtime.process import NOTABLE_EVENTS, EventLogger
from forehand.wire import ReasonCode

if TYPE_CHECKING:
    from tests.runtime._cluster import run_async
else:
    from _cluster import run_async

MANAGER_EVENT_TYPES: tuple[type, ...] = typing.get_args(manager_events.ManagerEvent)
SERVER_EVENT_TYPES: tuple[type, ...] = tuple(
    kind
    for kind in vars(server_events).values()
    if isinstance(kind, type)
    and issubclass(kind, server_events.ServerEvent)
    and kind is not server_events.ServerEvent
)
CLIENT_EVENT_TYPES: tuple[type, ...] = typing.get_args(client_events.ClientEvent)
CLUSTER_KEY = bytes(range(32))


class _EventCore:
    """A core for routing tests: emits the events a test queues, at the driver's next drain."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.events: deque[object] = deque()

    def receive_message(self, message: object, *, source: str, now_us: int) -> None:
        return None

    def handle_timer(self, *, now_us: int) -> None:
        return None

    def store_result(self, result: object, *, now_us: int) -> None:
        return None

    def messages_to_send(self) -> list[Outbound]:
        return []

    def store_requests(self) -> list[object]:
        return []

    def next_event(self) -> object | None:
        return self.events.popleft() if self.events else None

    def timer_us(self) -> int | None:
        return None


def _emit(driver: NodeDriver, events: Iterable[object]) -> None:
    """Have the driver's core emit `events` and the driver drain them."""

    def queue(core: _EventCore, now_us: int) -> None:
        core.events.extend(events)

    driver.command(queue)


def _started_driver(node_id: str = "s1") -> NodeDriver:
    driver = NodeDriver(_EventCore(node_id), resolve=lambda node: [])
    driver.start()
    return driver


# -- sample events: of each class a core emits, built from the field types --------------------

VARIANTS = 5
"""Events built per class: the n-th takes the n-th member of each enum (statuses, reasons)."""


def _sample(hint: Any, variant: int) -> Any:
    """A value of the type `hint` (the field types events use); enums and numbers vary with
    `variant`, names do not (one server, one session)."""
    simple: dict[Any, Any] = {bool: variant % 2 == 0, str: "s1", bytes: bytes(16)}
    if hint in simple:
        return simple[hint]
    if hint in (int, float):
        return hint(1 + variant)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        members = list(hint)
        return members[variant % len(members)]
    arguments = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return (_sample(arguments[0], variant),)
        return tuple(_sample(argument, variant) for argument in arguments)
    if arguments:  # `X | None`: an X.
        return _sample(next(a for a in arguments if a is not type(None)), variant)
    return _built(hint, variant)


def _built(kind: type, variant: int) -> Any:
    """An instance of the event (or record) class `kind`, every field set."""
    hints = typing.get_type_hints(kind)
    return kind(**{name: _sample(hint, variant) for name, hint in hints.items()})


def _events(kinds: tuple[type, ...]) -> list[object]:
    """`VARIANTS` rounds of one event of each of `kinds` (each round meets the state the rounds
    before left)."""
    return [_built(kind, variant) for variant in range(VARIANTS) for kind in kinds]


# -- the driver's routing ------------------------------------------------------------------------


class _Alpha:
    pass


class _Beta:
    pass


class _Gamma:
    pass


class _GammaChild(_Gamma):
    pass


class _Recorder:
    """A subscriber that keeps what it gets; `event_types` as given."""

    def __init__(self, event_types: frozenset[type] | None = None) -> None:
        self.event_types = event_types
        self.got: list[object] = []

    def __call__(self, event: object) -> None:
        self.got.append(event)


def test_each_subscriber_gets_only_the_event_classes_it_declared() -> None:
    """Undeclared classes are not delivered; a declared class brings its subclasses; the
    `event_types` argument wins over the subscriber's attribute; no declaration means every
    event, and an empty one none."""
    alpha, beta, gamma, child = _Alpha(), _Beta(), _Gamma(), _GammaChild()

    async def scenario() -> dict[str, list[object]]:
        driver = _started_driver()
        recorders = {
            "all": _Recorder(),
            "alpha": _Recorder(frozenset({_Alpha})),
            "gamma": _Recorder(),
            "beta_over_attribute": _Recorder(frozenset({_Alpha})),
            "none": _Recorder(frozenset()),
        }
        driver.subscribe(recorders["all"])
        driver.subscribe(recorders["alpha"])
        driver.subscribe(recorders["gamma"], event_types=(_Gamma,))
        driver.subscribe(recorders["beta_over_attribute"], event_types={_Beta})
        driver.subscribe(recorders["none"])
        try:
            _emit(driver, [alpha, beta, gamma, child, alpha])
        finally:
            await driver.close()
        return {name: recorder.got for name, recorder in recorders.items()}

    got = run_async(scenario())
    assert got == {
        "all": [alpha, beta, gamma, child, alpha],
        "alpha": [alpha, alpha],
        "gamma": [gamma, child],
        "beta_over_attribute": [beta],
        "none": [],
    }


def test_a_subscriber_added_after_a_class_was_routed_gets_it() -> None:
    """A class the driver has routed before still reaches a subscriber that comes later, from
    its next event on."""
    first, second = _Alpha(), _Alpha()

    async def scenario() -> tuple[list[object], list[object]]:
        driver = _started_driver()
        early, late = _Recorder(frozenset({_Alpha})), _Recorder(frozenset({_Alpha}))
        driver.subscribe(early)
        try:
            _emit(driver, [first])
            driver.subscribe(late)
            _emit(driver, [second])
        finally:
            await driver.close()
        return early.got, late.got

    assert run_async(scenario()) == ([first, second], [second])


def test_a_failing_subscriber_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    """A subscriber that raises is logged, and the subscribers after it still get the event,
    and it gets the next one."""
    events = [_Alpha(), _Alpha()]
    failed: list[object] = []

    def failing(event: object) -> None:
        failed.append(event)
        raise RuntimeError("subscriber bug")

    async def scenario() -> list[object]:
        driver = _started_driver()
        after = _Recorder(frozenset({_Alpha}))
        driver.subscribe(failing, event_types={_Alpha})
        driver.subscribe(after)
        try:
            _emit(driver, events)
        finally:
            await driver.close()
        return after.got

    with caplog.at_level(logging.ERROR, logger="forehand.runtime.node"):
        assert run_async(scenario()) == events
    assert failed == events
    assert [r.getMessage().startswith("event subscriber failed") for r in caplog.records] == [
        True,
        True,
    ]


def test_event_types_must_be_classes() -> None:
    """Declaring something that is not a class is refused when subscribing."""
    driver = NodeDriver(_EventCore("s1"), resolve=lambda node: [])
    with pytest.raises(AssertionError, match="event_types must be classes"):
        driver.subscribe(_Recorder(), event_types=("RequestExecuted",))  # type: ignore[arg-type]


def test_the_route_table_stays_bounded() -> None:
    """More event classes than EVENT_ROUTES_MAX are all still delivered, and the driver never
    remembers more routes than that."""
    kinds = [type(f"Kind{index}", (), {}) for index in range(EVENT_ROUTES_MAX + 10)]
    events = [kind() for kind in kinds]

    async def scenario() -> tuple[list[object], int]:
        driver = _started_driver()
        everything = _Recorder()
        driver.subscribe(everything)
        try:
            _emit(driver, events)
            return everything.got, len(driver._routes)
        finally:
            await driver.close()

    got, routes = run_async(scenario())
    assert got == events
    assert routes <= EVENT_ROUTES_MAX


# -- each subscriber's declaration -----------------------------------------------------------


def test_declarations_name_real_events_and_cover_every_handled_class() -> None:
    """Every class a subscriber has a handler for is declared, and every declared class is an
    event of the core it listens to."""
    manager, server = set(MANAGER_EVENT_TYPES), set(SERVER_EVENT_TYPES)
    declared_by_table: dict[str, tuple[frozenset[type], set[type], set[type]]] = {
        "ServerMetrics": (metrics._SERVER_EVENT_TYPES, set(metrics._SERVER_HANDLERS), server),
        "ManagerMetrics": (metrics._MANAGER_EVENT_TYPES, set(metrics._MANAGER_HANDLERS), manager),
        "LoadSampler": (LoadSampler.event_types, {server_events.RequestExecuted}, server),
        "hub stream": (
            hub.STREAMED_EVENT_TYPES,
            {manager_events.HandoffStarted, manager_events.DrainProgressed},
            manager,
        ),
        "risk tracker": (hub.RISK_EVENT_TYPES, {manager_events.RiskAssessed}, manager),
    }
    for name, (declared, handled, core_events) in declared_by_table.items():
        assert handled <= declared <= core_events, name
    audit_declared = audit._AUDIT_EVENT_TYPES
    assert set(audit._HANDLERS) <= {kind.__name__ for kind in audit_declared}
    assert manager_events.RiskAssessed in audit_declared  # `_on_decision`'s only manager event.
    assert audit_declared <= manager


@pytest.mark.parametrize(
    ("level", "expected"),
    [(logging.DEBUG, "every"), (logging.INFO, "notable"), (logging.WARNING, "warnings")],
)
def test_routed_event_logger_logs_what_it_logged_when_handed_everything(
    caplog: pytest.LogCaptureFixture, level: int, expected: str
) -> None:
    """At DEBUG, INFO and WARNING, an EventLogger subscribed to the driver logs the same lines as
    one handed every event of every core: all of them, the notable ones, the warnings."""
    events = _events(MANAGER_EVENT_TYPES + SERVER_EVENT_TYPES + CLIENT_EVENT_TYPES)

    async def scenario() -> None:
        driver = _started_driver()
        driver.subscribe(EventLogger("routed"))
        direct = EventLogger("direct")
        try:
            _emit(driver, events)
        finally:
            await driver.close()
        for event in events:
            direct(event)

    with caplog.at_level(level, logger="forehand.events"):
        run_async(scenario())
    lines: dict[str, list[str]] = {"forehand.events.routed": [], "forehand.events.direct": []}
    for record in caplog.records:
        lines[record.name].append(record.getMessage())
    assert lines["forehand.events.routed"] == lines["forehand.events.direct"]
    logged = {line.split(" ", 1)[0] for line in lines["forehand.events.routed"]}
    every = {kind.__name__ for kind in MANAGER_EVENT_TYPES + SERVER_EVENT_TYPES}
    every |= {kind.__name__ for kind in CLIENT_EVENT_TYPES}
    warnings = {
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
    levels = {"every": every, "notable": set(NOTABLE_EVENTS), "warnings": warnings}
    assert logged == levels[expected]
    warned = {
        r.getMessage().split(" ", 1)[0] for r in caplog.records if r.levelno == logging.WARNING
    }
    assert warned == warnings


def test_a_server_dead_while_it_led_parts_is_a_warning_a_drained_one_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A crash fails parts over: WARNING. A server drained, then stopped, leads none: INFO
    (every deploy would otherwise warn)."""
    crashed, stopped = (
        manager_events.ServerDeclaredDead(
            server_id=server_id,
            incarnation=1,
            cause=manager_events.DeathCause.SILENCE,
            silent_us=2_000_000,
            primary_parts=parts,
        )
        for server_id, parts in (("s3", 219), ("s1", 0))
    )
    logger = EventLogger("manager")
    with caplog.at_level(logging.INFO, logger="forehand.events"):
        logger(crashed)
        logger(stopped)
    assert [(r.levelno, r.getMessage().split()[1]) for r in caplog.records] == [
        (logging.WARNING, "server_id=s3"),
        (logging.INFO, "server_id=s1"),
    ]


def test_a_replication_stall_is_a_warning_its_end_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Writes waiting for unreachable replicas: WARNING; the stall over (no parts): INFO."""
    started, ended = (
        server_events.ReplicatedWritesStalled(
            node="s1", parts=parts, answers=answers, replicas=replicas
        )
        for parts, answers, replicas in ((3, 40, ("s2", "s3")), (0, 0, ()))
    )
    logger = EventLogger("s1")
    with caplog.at_level(logging.INFO, logger="forehand.events"):
        logger(started)
        logger(ended)
    assert [(r.levelno, "parts=3" in r.getMessage().split()) for r in caplog.records] == [
        (logging.WARNING, True),
        (logging.INFO, False),
    ]


def test_a_server_not_hearing_the_manager_is_a_warning_hearing_again_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Heartbeats that stop confirming the maps sent: WARNING; confirming again: INFO."""
    started, ended = (
        manager_events.ServerNotHearing(
            server_id="s2",
            hearing=hearing,
            map_version=12,
            map_version_sent=15,
            unconfirmed_us=unconfirmed_us,
        )
        for hearing, unconfirmed_us in ((False, 1_200_000), (True, 9_800_000))
    )
    logger = EventLogger("manager")
    with caplog.at_level(logging.INFO, logger="forehand.events"):
        logger(started)
        logger(ended)
    assert [(r.levelno, "hearing=True" in r.getMessage().split()) for r in caplog.records] == [
        (logging.WARNING, False),
        (logging.INFO, True),
    ]


def _counts(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The registry's samples that do not depend on timing (no sums, buckets, creation times)."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_bucket", "_created")):
                continue
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_routed_server_subscribers_account_for_what_they_did_when_handed_everything() -> None:
    """ServerMetrics and the LoadSampler subscribed to a driver count the same requests, errors,
    latency samples and series as twins handed every server event, and some counts moved."""
    events = _events(SERVER_EVENT_TYPES)
    sealer = TokenSealer(KeyRing({1: CLUSTER_KEY}, current_key_id=1), rng=random.Random(1))
    core = ServerCore(
        config=ServerConfig(server_id="s1"), parts={}, sealer=sealer, rng=random.Random(2)
    )

    async def scenario() -> list[Any]:
        driver = _started_driver()
        routed = (ServerMetrics(core=core, driver=driver), LoadSampler(driver, 60_000))
        direct = (ServerMetrics(core=core, driver=driver), LoadSampler(driver, 60_000))
        for subscriber in routed:
            driver.subscribe(subscriber)
        try:
            _emit(driver, events)
        finally:
            await driver.close()
        for event in events:
            for subscriber in direct:
                subscriber(event)
        return [
            (_counts(m.registry), s._requests, s._errors, len(s._latencies_us))
            for m, s in (routed, direct)
        ]

    routed, direct = run_async(scenario())
    assert routed == direct
    counts, requests, errors, latencies = routed
    assert requests == latencies == VARIANTS
    assert errors == VARIANTS  # Statuses 1 to VARIANTS: none is OK.
    assert counts[("forehand_log_entries_applied_total", (("part", "s1"),))] == VARIANTS
    # Scrape-time gauges read the core itself: it parked no waiting read.
    assert counts[("forehand_waiting_reads", ())] == core.reads_parked_count == 0


def _untimed(record: audit.AuditRecord) -> tuple[audit.AuditRecord, audit.RiskNote | None]:
    """An audit record and its risk note without what the clock decides (a drain's duration is
    measured by the clock; the other kinds' come with their events)."""
    duration_ms = 0.0 if record.kind == "drain" else record.duration_ms
    untimed = dataclasses.replace(
        record, started_us=0, ended_us=0, duration_ms=duration_ms, lead_time_ms=None, risk=None
    )
    risk = record.risk and dataclasses.replace(record.risk, decided_us=0)
    return untimed, risk


def _manager_state(ops: OpsHub, stream: asyncio.Queue[dict[str, Any] | None]) -> dict[str, Any]:
    """What the hub and its subscribers hold, without the clock's readings."""
    messages: list[Any] = []
    while not stream.empty():
        message = stream.get_nowait()
        assert message is not None
        data = message["data"]
        if message["type"] == "handoff_started":
            data = {key: value for key, value in data.items() if key != "at_ms"}
        elif message["type"] == "audit":
            data = {key: data[key] for key in ("kind", "source", "target", "reason", "outcome")}
        elif message["type"] == "snapshot":
            data = None
        messages.append((message["type"], data))
    return {
        "risk": {key: risk for key, (risk, _) in ops.risk.servers.items()},
        "paths": {key: risk for key, (risk, _) in ops.risk.paths.items()},
        "records": [_untimed(record) for record in ops.audit.query()],
        "metrics": _counts(ops.metrics.registry),
        "drains": dict(ops.drains),
        "stream": messages,
    }


def test_routed_ops_hub_accounts_for_what_it_did_when_handed_everything() -> None:
    """The ops hub subscribed to a manager driver (risk tracker, audit log, metrics, its own
    drain and handoff stream) ends with the same risks, records, counts, drains and streamed
    messages as a twin whose subscribers were handed every manager event, and each moved."""
    events = _events(MANAGER_EVENT_TYPES)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        routed_driver, quiet_driver = _started_driver("manager"), _started_driver("manager")
        routed, direct = (OpsHub(d, policy=None) for d in (routed_driver, quiet_driver))
        streams = routed.open_stream(), direct.open_stream()
        try:
            _emit(routed_driver, events)
            handed: tuple[Callable[[object], None], ...] = (
                direct.risk,
                direct.audit,
                direct.metrics,
                direct._on_event,
            )
            for event in events:
                for subscriber in handed:
                    subscriber(event)
            return _manager_state(routed, streams[0]), _manager_state(direct, streams[1])
        finally:
            for ops in (routed, direct):
                await ops.close()
            for driver in (routed_driver, quiet_driver):
                await driver.close()

    routed, direct = run_async(scenario())
    assert routed == direct
    assert routed["risk"] and routed["drains"]
    assert any(risk is not None for _, risk in routed["records"])
    assert {kind for kind, _ in routed["stream"]} >= {"handoff_started", "drain", "audit"}
    assert routed["metrics"][("forehand_sessions_registered_total", ())] == VARIANTS


def test_codes_and_parts_are_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    """A handoff's reason shows by name and its parts as `session/part`, not as an enum's
    number and the bytes of a PartRef (found by a new-user walkthrough: `reason=1` and hundreds
    of characters of escaped bytes per line)."""
    ref = PartRef(session_id=bytes(range(16)), part="match")
    event = manager_events.HandoffStarted(
        handoff_id=7,
        reason=ReasonCode.PLANNED_MAINTENANCE,
        parts=(ref,),
        source="s3",
        target="s1",
        map_version=8,
        planned_us=1,
        assigned_us=2,
    )
    with caplog.at_level(logging.INFO, logger="forehand.events"):
        EventLogger("manager")(event)
    (record,) = caplog.records
    message = record.getMessage()
    assert "reason=planned_maintenance" in message
    assert "parts=['000102030405060708090a0b0c0d0e0f/match']" in message
    assert record.__dict__["fields"]["reason"] == "planned_maintenance"


def test_a_reason_held_as_a_number_is_logged_as_the_number(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Some events hold a ResumeRejectReason as a plain int: it is not read as a handoff reason
    (a second reading found TOKEN_EXPIRED logged as planned_maintenance)."""
    event = manager_events.CredentialRefused(
        client="c1", session_id=bytes(16), reason=1, detail="expired"
    )
    with caplog.at_level(logging.DEBUG, logger="forehand.events"):
        EventLogger("manager")(event)
    (record,) = caplog.records
    assert " reason=1 " in record.getMessage()


def test_a_long_sequence_field_is_logged_as_its_count_and_first_items(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failover of 30,000 parts logs one line of bounded length: the promotions field is
    their count and the first LOGGED_ITEMS_MAX of them, in the message and the JSON fields."""
    refs = tuple(
        PartRef(session_id=index.to_bytes(16, "big"), part="cart") for index in range(30_000)
    )
    event = manager_events.PartsLost(parts=refs, servers=("s2",), map_version=9)
    with caplog.at_level(logging.INFO, logger="forehand.events"):
        EventLogger("manager")(event)
    (record,) = caplog.records
    message = record.getMessage()
    assert len(message) < 2_000
    first, last = (f"{ref.session_id.hex()}/cart" for ref in (refs[0], refs[-1]))
    assert "<30000 items: " in message and first in message and last not in message
    fields = record.__dict__["fields"]
    assert fields["parts"].startswith("<30000 items: ") and fields["servers"] == ("s2",)
