"""`forehand.App`: parts and handlers become the `PartSpec`s a server runs, by a strict contract."""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import typing
from typing import Any

import msgspec
import pytest

import forehand
from forehand.app import ErrorBody, decode_error_body
from forehand.core import Durability, PartSpec
from forehand.errors import ConfigError
from forehand.wire import ResponseStatus


class Counter(msgspec.Struct):
    """A test part's state."""

    value: int = 0
    history: list[int] = msgspec.field(default_factory=list)


class Step(msgspec.Struct, frozen=True):
    """A test payload."""

    by: int


def make_app() -> forehand.App:
    app = forehand.App("test")
    app.part("counter", initial=Counter, durability="replicated")
    app.part("plain")

    @app.handler("counter", "add")
    def add(state: Counter, step: Step) -> tuple[Counter, int]:
        if step.by == 0:
            raise forehand.HandlerError("zero step", detail={"by": 0})
        state.value += step.by
        state.history.append(step.by)
        return state, state.value

    @app.handler("counter", "double")
    async def double(state: Counter, payload: None) -> tuple[Counter, int]:
        return Counter(value=state.value * 2, history=state.history), state.value * 2

    @app.handler("counter", "sleepy")
    async def sleepy(state: Counter, payload: None) -> tuple[Counter, int]:
        await asyncio.sleep(0)
        return state, 0

    @app.handler("counter", "crash")
    def crash(state: Counter, payload: None) -> tuple[Counter, int]:
        raise KeyError("boom")

    @app.handler("counter", "get", read_only=True)
    def get(state: Counter, payload: None) -> tuple[Counter, int]:
        return state, state.value

    @app.handler("counter", "square")
    def square(state: Counter, payload: None) -> tuple[Counter, int]:
        return Counter(value=state.value**2), state.value**2

    @app.handler("plain", "peek", read_only=True)
    def peek(state: dict[str, Any], payload: None) -> tuple[dict[str, Any], dict[str, Any]]:
        return state, state

    @app.handler("plain", "put")
    def put(state: dict[str, Any], payload: Any) -> tuple[dict[str, Any], None]:
        state["value"] = payload
        return state, None

    return app


def run(spec: PartSpec, state: object, op: str, payload: object) -> tuple[object, int, Any]:
    outcome = spec.handler(state, op, msgspec.msgpack.encode(payload))
    status = ResponseStatus(outcome.status)
    result = msgspec.msgpack.decode(outcome.result)
    if status is not ResponseStatus.OK:
        result = decode_error_body(outcome.result)
    return outcome.state, status, result


def test_parts_become_part_specs() -> None:
    """Each part gets its initial state, durability, snapshot type and read-only operations."""
    specs = make_app().part_specs()
    assert list(specs) == ["counter", "plain"]
    counter = specs["counter"]
    assert counter.durability is Durability.REPLICATED
    assert counter.read_ops == frozenset({"get"})
    assert counter.initial_state() == Counter()
    assert counter.state_type is Counter
    assert specs["plain"].durability is Durability.ASYNC
    assert specs["plain"].state_type is Any


def test_handler_returns_new_state_and_result() -> None:
    """A handler's (state, result) pair becomes the part's state and the msgpack answer."""
    spec = make_app().part_specs()["counter"]
    state, status, result = run(spec, Counter(), "add", Step(by=3))
    assert status is ResponseStatus.OK and result == 3
    assert state == Counter(value=3, history=[3])
    state, status, result = run(spec, state, "double", None)
    assert status is ResponseStatus.OK and result == 6 and state == Counter(value=6, history=[3])


def test_payload_is_decoded_as_the_annotated_type() -> None:
    """A payload that does not decode as the handler's parameter type answers BAD_REQUEST."""
    spec = make_app().part_specs()["counter"]
    state, status, result = run(spec, Counter(), "add", {"by": "three"})
    assert status is ResponseStatus.BAD_REQUEST
    assert isinstance(result, ErrorBody) and "counter.add" in result.error
    assert state == Counter()
    _, status, _ = run(make_app().part_specs()["plain"], {}, "put", [1, {"a": None}])
    assert status is ResponseStatus.OK
    nested = b"\x91" * 100_000 + b"\xc0"
    outcome = make_app().part_specs()["plain"].handler({}, "put", nested)
    assert ResponseStatus(outcome.status) is ResponseStatus.BAD_REQUEST
    assert "nested too deeply" in decode_error_body(outcome.result).error
    # A string that is not UTF-8 (msgspec raises UnicodeDecodeError, not DecodeError): it was
    # APP_ERROR with the payload `UnicodeDecodeError`, which the client read as the error.
    outcome = make_app().part_specs()["plain"].handler({}, "put", b"\xa2\xff\xfe")
    assert ResponseStatus(outcome.status) is ResponseStatus.BAD_REQUEST
    error = decode_error_body(outcome.result).error
    assert error == "plain.put: bad payload: a string is not UTF-8 (invalid start byte at byte 0)"
    assert decode_error_body(b"\xa2\xff\xfe").error == "\ufffd" * 3


def test_failures_answer_statuses_not_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    """HandlerError answers APP_ERROR with its message and detail, another exception a generic
    APP_ERROR (logged), an unknown operation UNKNOWN_OP; the state is the one passed in."""
    spec = make_app().part_specs()["counter"]
    before = Counter(value=1)
    state, status, result = run(spec, before, "add", Step(by=0))
    assert status is ResponseStatus.APP_ERROR and state is before
    assert result == ErrorBody(error="zero step", detail={"by": 0})
    with caplog.at_level(logging.ERROR, logger="forehand.app"):
        state, status, result = run(spec, before, "crash", None)
    assert status is ResponseStatus.APP_ERROR and state is before
    assert result.error == "counter.crash failed on the server"
    assert "handler counter.crash failed" in caplog.text
    _, status, result = run(spec, before, "refund", None)
    assert status is ResponseStatus.UNKNOWN_OP and "refund" in result.error


def test_a_handler_that_returns_no_pair_is_told_so() -> None:
    """Returning the new state alone (or a triple) is refused with APP_ERROR saying what was
    returned and what is expected, not a generic failure; the state stays as it was. A list
    of two still counts as a pair."""
    app = forehand.App("shapes")
    app.part("doc", initial=Counter)

    @app.handler("doc", "alone")
    def alone(state: Counter, payload: None) -> Any:
        return Counter(value=9)

    @app.handler("doc", "triple")
    def triple(state: Counter, payload: None) -> Any:
        return state, 1, 2

    @app.handler("doc", "listed")
    def listed(state: Counter, payload: None) -> Any:
        return [Counter(value=5), 5]

    spec = app.part_specs()["doc"]
    before = Counter(value=1)
    state, status, result = run(spec, before, "alone", None)
    assert status is ResponseStatus.APP_ERROR and state is before
    assert result.error == (
        "doc.alone returned a Counter, not a (new_state, result) pair: refused, the state is "
        "unchanged"
    )
    _, status, result = run(spec, before, "triple", None)
    assert status is ResponseStatus.APP_ERROR and "returned a tuple of 3" in result.error
    state, status, result = run(spec, before, "listed", None)
    assert status is ResponseStatus.OK and state == Counter(value=5) and result == 5


def test_a_result_msgspec_cannot_encode_answers_app_error_saying_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A result msgspec cannot encode (an int over 64 bits, a state read back holding an
    unknown type) answers APP_ERROR saying the result could not be encoded and msgspec's reason,
    logged in one line; the state is the one passed in."""
    counter = make_app().part_specs()["counter"]
    before = Counter(value=2**40)
    with caplog.at_level(logging.ERROR, logger="forehand.app"):
        state, status, result = run(counter, before, "square", None)
    assert status is ResponseStatus.APP_ERROR and state is before
    assert result.error == (
        "counter.square: the result could not be encoded: "
        "can't serialize ints < -2**63 or > 2**64 - 1"
    )
    assert "counter.square: the result could not be encoded" in caplog.text
    assert "Traceback" not in caplog.text
    plain = make_app().part_specs()["plain"]
    _, status, result = run(plain, {"when": object()}, "peek", None)
    assert status is ResponseStatus.APP_ERROR
    assert result.error == (
        "plain.peek: the result could not be encoded: Encoding objects of type object is "
        "unsupported"
    )


class _RaisingZone(datetime.tzinfo):
    """A time zone whose offset raises: msgspec calls it while it encodes a datetime."""

    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        raise RuntimeError("no offset for this zone")

    def dst(self, dt: datetime.datetime | None) -> datetime.timedelta | None:
        return None

    def tzname(self, dt: datetime.datetime | None) -> str | None:
        return None


def test_a_result_whose_encoding_raises_anything_else_is_still_an_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Encoding a result runs the application's code too (a time zone's offset, here): what it
    raises, whatever the class, answers APP_ERROR with the generic message and logs the
    traceback, as the handler's own exceptions do; `run` never raises."""
    plain = make_app().part_specs()["plain"]
    when = datetime.datetime(2026, 1, 1, tzinfo=_RaisingZone())
    with caplog.at_level(logging.ERROR, logger="forehand.app"):
        outcome = plain.handler({"when": when}, "peek", msgspec.msgpack.encode(None))
    assert ResponseStatus(outcome.status) is ResponseStatus.APP_ERROR
    assert decode_error_body(outcome.result).error == "plain.peek failed on the server"
    assert "no offset for this zone" in caplog.text and "Traceback" in caplog.text


def test_async_handler_that_suspends_fails_with_app_error(caplog: pytest.LogCaptureFixture) -> None:
    """An async handler that awaits something that suspends fails the request with APP_ERROR and
    a log line saying why; one that never suspends runs like a plain function."""
    spec = make_app().part_specs()["counter"]
    with caplog.at_level(logging.ERROR, logger="forehand.app"):
        state, status, result = run(spec, Counter(value=2), "sleepy", None)
    assert status is ResponseStatus.APP_ERROR
    assert "suspended at an await" in result.error
    assert "must not await I/O" in caplog.text
    assert state == Counter(value=2)


def test_a_new_state_that_is_not_the_state_type_is_refused_and_the_state_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler returning a new state of another type than the part's (a dict for a Counter)
    gets APP_ERROR naming both types, and the state stays as it was. Before, it was kept: every
    later call on the part, reads included, failed on it for good (found by a new-user
    walkthrough)."""
    app = forehand.App()
    app.part("counter", initial=Counter)

    @app.handler("counter", "oops")
    def oops(state: Counter, payload: None) -> tuple[Any, int]:
        return {"value": "oops"}, 1

    @app.handler("counter", "get", read_only=True)
    def get(state: Counter, payload: None) -> tuple[Counter, int]:
        return state, state.value

    spec = app.part_specs()["counter"]
    with caplog.at_level(logging.ERROR, logger="forehand.app"):
        state, status, result = run(spec, Counter(value=7), "oops", None)
    assert status is ResponseStatus.APP_ERROR
    assert "returned a new state of type dict, not Counter" in result.error
    assert state == Counter(value=7)
    assert "refused, the state is unchanged" in caplog.text
    assert run(spec, state, "get", None)[1:] == (ResponseStatus.OK, 7)


def test_snapshots_decode_as_the_state_type() -> None:
    """A replica's snapshot of the state decodes back into the part's state class."""
    spec = make_app().part_specs()["counter"]
    state, _, _ = run(spec, Counter(), "add", Step(by=5))
    copy = msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=spec.state_type)
    assert copy == state and isinstance(copy, Counter)


def new_counter() -> Counter:
    return Counter(value=1)


def test_a_factory_s_state_decodes_as_what_it_builds() -> None:
    """`initial` as a function: replicas decode snapshots as its return annotation, else as the
    class of what it returns; dicts and lists stay plain. Before, every factory's state
    decoded as a dict on a replica that installed a snapshot, and its handlers failed there
    after a failover (found by a new-user walkthrough)."""
    app = forehand.App()
    app.part("annotated", initial=new_counter)
    app.part("built", initial=lambda: Counter(value=2))
    app.part("listed", initial=lambda: [1, 2])
    app.part("stated", initial=lambda: Counter(value=3), state_type=dict)
    specs = app.part_specs()
    assert specs["annotated"].state_type is Counter
    assert specs["built"].state_type is Counter
    assert specs["listed"].state_type is Any
    assert specs["stated"].state_type is dict
    encoded = msgspec.msgpack.encode(Counter(value=4, history=[4]))
    copy = msgspec.msgpack.decode(encoded, type=specs["built"].state_type)
    assert copy == Counter(value=4, history=[4])


def test_types_that_cannot_be_resolved_are_refused_at_registration() -> None:
    """Annotations naming a type the module cannot see (defined in a function, under `from
    __future__ import annotations`) raise ConfigError naming the handler or part; before, the
    payload or state decoded as a dict and the calls failed with a generic APP_ERROR."""

    class Local(msgspec.Struct):
        x: int = 0

    app = forehand.App()
    app.part("p", initial=Local)

    def handler(state: Local, payload: Local) -> tuple[Local, int]:
        return state, payload.x

    with pytest.raises(ConfigError, match=r"annotations of handler .*handler.*payload_type="):
        app.handler("p", "op")(handler)
    app.handler("p", "op", payload_type=Local)(handler)

    def factory() -> Local:
        return Local()

    with pytest.raises(ConfigError, match=r"return annotation of part 'q'.*state_type="):
        app.part("q", initial=factory)
    app.part("q", initial=factory, state_type=Local)
    assert app.part_specs()["q"].state_type is Local

    def broken() -> dict[str, int]:
        raise RuntimeError("no")

    app.part("r", initial=broken)
    assert app.part_specs()["r"].state_type == dict[str, int]

    def unannotated():  # type: ignore[no-untyped-def]
        raise RuntimeError("no")

    with pytest.raises(ConfigError, match="initial of part 's' raised"):
        app.part("s", initial=unannotated)


class Board(msgspec.Struct):
    """A state built by a classmethod annotated `-> Self`."""

    turn: str = "X"

    @classmethod
    def new(cls) -> typing.Self:
        return cls(turn="O")


def test_a_factory_annotated_with_what_msgspec_cannot_decode_falls_back_to_what_it_builds() -> None:
    """`-> Self` is no type msgspec decodes as: the class of what the factory builds is used
    (a second reading found snapshots failing to decode). A handler typing cannot read (a
    functools.partial) registers with its payload decoded as any value, as before."""
    app = forehand.App()
    app.part("board", initial=Board.new)
    assert app.part_specs()["board"].state_type is Board

    def move(state: Board, payload: int, *, by: str) -> tuple[Board, str]:
        return state, by

    app.handler("board", "move")(functools.partial(move, by="X"))
    assert "move" in app.part_specs()["board"].handler.__self__.operations  # type: ignore[attr-defined]


def test_declaration_mistakes_raise_config_error() -> None:
    """Handlers before their part, duplicates, bad names and bad durability are refused."""
    app = forehand.App()
    with pytest.raises(ConfigError, match="declare part"):
        app.handler("cart", "add")
    app.part("cart")
    with pytest.raises(ConfigError, match="twice"):
        app.part("cart")
    with pytest.raises(ConfigError, match="part name") as bad:
        app.part("Bad Name")
    assert "at most 64 characters" in str(bad.value) and str(bad.value).count("Bad Name") == 1
    with pytest.raises(ConfigError, match="must be a callable"):
        app.part("counter", initial=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="durability"):
        app.part("other", durability="eventually")

    @app.handler("cart", "add")
    def add(state: dict[str, int], payload: int) -> tuple[dict[str, int], int]:
        return state, payload

    with pytest.raises(ConfigError, match="has a handler"):
        app.handler("cart", "add")
    with pytest.raises(ConfigError, match="no parts"):
        forehand.App("empty").part_specs()


def chat_app() -> forehand.App:
    app = forehand.App("chat")
    app.part("chat", initial=list)

    @app.handler("chat", "post")
    def post(messages: list[str], text: str) -> tuple[list[str], int]:
        messages.append(text)
        return messages, len(messages)

    @app.handler("chat", "since", read_only=True, wait_ms=1_500)
    def since(messages: list[str], index: int) -> tuple[list[str], Any]:
        return messages, messages[index:] or forehand.NOT_YET

    @app.handler("chat", "eager", read_only=True)
    def eager(messages: list[str], payload: None) -> tuple[list[str], Any]:
        return messages, forehand.NOT_YET

    return app


def test_a_waiting_read_becomes_a_wait_op_and_not_yet_a_waiting_result() -> None:
    """`wait_ms` lists the op in `wait_ops`; NOT_YET answers OK None with `waiting` set."""
    spec = chat_app().part_specs()["chat"]
    assert spec.read_ops == {"since", "eager"}
    assert spec.wait_ops == {"since": 1_500}
    waiting = spec.handler([], "since", msgspec.msgpack.encode(0))
    assert waiting.waiting and waiting.status == ResponseStatus.OK
    assert msgspec.msgpack.decode(waiting.result) is None
    answered = spec.handler(["hi"], "since", msgspec.msgpack.encode(0))
    assert not answered.waiting and msgspec.msgpack.decode(answered.result) == ["hi"]
    assert repr(forehand.NOT_YET) == "forehand.NOT_YET"
    assert forehand.NOT_YET is forehand.app.NotYet()


def test_not_yet_from_an_op_that_is_no_waiting_read_is_app_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain read returning NOT_YET fails, saying how to register a waiting read."""
    spec = chat_app().part_specs()["chat"]
    with caplog.at_level(logging.ERROR, logger="forehand.app"):
        outcome = spec.handler([], "eager", msgspec.msgpack.encode(None))
    assert outcome.status == ResponseStatus.APP_ERROR and not outcome.waiting
    assert "wait_ms" in decode_error_body(outcome.result).error


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wait_ms": 1_000}, "read_only"),
        ({"read_only": True, "wait_ms": 0}, "wait_ms must be 1 to"),
        ({"read_only": True, "wait_ms": 300_001}, "wait_ms must be 1 to"),
        ({"read_only": True, "wait_ms": 1.5}, "must be an int"),
        ({"read_only": True, "wait_ms": True}, "must be an int"),
    ],
)
def test_wait_ms_is_for_read_only_ops_and_bounded(options: dict[str, Any], message: str) -> None:
    """wait_ms without read_only, or out of 1..WAIT_MS_MAX, is a ConfigError at registration."""
    app = forehand.App()
    app.part("chat")
    with pytest.raises(ConfigError, match=message):
        app.handler("chat", "since", **options)
