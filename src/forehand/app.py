"""`App`: the application a Forehand server hosts, as parts with state and handlers per operation.

    app = forehand.App()
    app.part("cart", initial=Cart, durability="replicated")

    @app.handler("cart", "add")
    def add(cart: Cart, item: Item) -> tuple[Cart, int]:
        cart.items[item.sku] = cart.items.get(item.sku, 0) + item.quantity
        return cart, sum(cart.items.values())

**The handler contract.** A handler takes `(state, payload)` and returns `(new_state, result)`.
It may build a new state or change the one it was given and return it. The payload is the
client's value, decoded from msgpack as the type the handler's second parameter is annotated with
(or `payload_type=`; unannotated means any msgpack value); the result is encoded with msgspec
msgpack and becomes the client's return value. The part's state must be a value msgspec can
encode: replicas receive it in snapshots, decoded as `state_type` (by default the class given as
`initial`, or the type a factory function `initial` is annotated to return or returns; plain
msgpack values for dicts and lists).

Handlers run on the primary and again on every replica, which replays the log by re-executing
them (state-machine replication), so they must be deterministic: no clock, no randomness, no I/O,
nothing but the state and the payload. A handler may be `async def` for convenience, but it is
driven to completion synchronously and must not await anything that suspends (a sleep, a socket,
a lock): one that suspends fails the request with APP_ERROR, and the log says why. They must
also be quick: they run on the server's event loop, which serves nothing else and sends no
heartbeat meanwhile, so one that blocks it past the manager's failure timeout (3 s by default)
gets the server declared dead, and the client sends the call on to the next primary, which runs
it again. A run of 250 ms or more is logged at WARNING, naming the handler.

**Failures.** Raise `HandlerError(message, detail=...)` to answer APP_ERROR with your message; the
client's `Session.call` raises `AppError` carrying it. Any other exception also answers APP_ERROR
(with a generic message; the server logs the traceback), and so does a result msgspec cannot
encode (with msgspec's reason). A payload that does not decode as the
handler's type answers BAD_REQUEST, an operation without a handler UNKNOWN_OP. On a failure the
state is not rolled back: a handler that changes its state in place should check its input
before it changes anything. Every replica fails the same way, so replicas never diverge.

Operations registered with `read_only=True` are answered from the primary's state and never
logged or replicated; they must not change the state.

**Waiting reads.** A read registered with `wait_ms=` (`read_only=True` only) may return
`(state, NOT_YET)`: nothing to answer yet. The primary parks the request and runs the handler
again after each write to the part, answering as soon as it returns a result; when `wait_ms`
passes first, or the part stops being primary on that server (a handoff, a failover, a
shutdown), the client gets `None` and calls again. Give the call a timeout of its own,
`session.call(..., timeout_ms=)`: its REQUEST then carries the wait left to that timeout, and
the server answers `None` within it, even after a crash moved the part.

    @app.handler("chat", "since", read_only=True, wait_ms=20_000)
    def since(room: Room, index: int) -> tuple[Room, list[str] | NotYet]:
        return room, room.messages[index:] or forehand.NOT_YET
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from forehand.core import WAIT_MS_MAX, Durability, HandlerResult, PartSpec
from forehand.errors import ConfigError, ForehandError
from forehand.placement import check_part_name
from forehand.wire import ResponseStatus

__all__ = [
    "NOT_YET",
    "WAIT_MS_MAX",
    "App",
    "ErrorBody",
    "HandlerError",
    "NotYet",
    "decode_error_body",
]

_log = logging.getLogger("forehand.app")

StateT = TypeVar("StateT")
HandlerFunction = Callable[[Any, Any], Any]
"""`(state, payload) -> (new_state, result)`, or a coroutine function returning that pair."""
F = TypeVar("F", bound=HandlerFunction)

_encoder = msgspec.msgpack.Encoder()
_OK = int(ResponseStatus.OK)
_APP_ERROR = int(ResponseStatus.APP_ERROR)
_BAD_REQUEST = int(ResponseStatus.BAD_REQUEST)
_UNKNOWN_OP = int(ResponseStatus.UNKNOWN_OP)
NOT_ENCODABLE = (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError)
"""What msgspec raises for a value it cannot encode (an int outside 64 bits, an unknown type)."""


class NotYet:
    """The type of `NOT_YET`, for annotations (`-> tuple[Room, list[str] | NotYet]`)."""

    __slots__ = ()
    _instance: NotYet | None = None

    def __new__(cls) -> NotYet:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "forehand.NOT_YET"

    def __reduce__(self) -> str:
        return "NOT_YET"


NOT_YET = NotYet()
"""What a waiting read (`App.handler(..., wait_ms=)`) returns as its result when it has nothing
to answer yet: the primary parks the request until a write gives it a result or its wait ends."""
_NONE = _encoder.encode(None)
"""The answer of a waiting read whose wait ended without a result."""


class HandlerError(ForehandError):
    """Raised by a handler to answer APP_ERROR with `message` (and `detail`) to the client."""

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        """Shown to the client, in `AppError.message`."""
        self.detail = detail
        """Any msgpack value for the client, in `AppError.detail`."""


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of an APP_ERROR, BAD_REQUEST or UNKNOWN_OP response from an `App`."""

    error: str
    """What went wrong, for people."""
    detail: Any = None
    """What the handler attached (`HandlerError.detail`)."""


def decode_error_body(payload: bytes) -> ErrorBody:
    """The `ErrorBody` of a failure response; a payload that is none becomes its text."""
    try:
        return msgspec.msgpack.decode(payload, type=ErrorBody)
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec lets a string that is not UTF-8 escape as UnicodeDecodeError.
        return ErrorBody(error=payload.decode(errors="replace"))


def _error(status: int, state: object, message: str, detail: Any = None) -> HandlerResult:
    body = _encoder.encode(ErrorBody(error=message, detail=detail))
    return HandlerResult(state=state, status=status, result=body)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Operation:
    """One registered handler."""

    name: str
    function: HandlerFunction
    decoder: msgspec.msgpack.Decoder[Any]
    is_async: bool
    read_only: bool
    wait_ms: int | None


@dataclass(slots=True, kw_only=True)
class _Part:
    """One declared part: how to build its state, its durability, its operations."""

    name: str
    initial: Callable[[], object]
    state_type: Any
    durability: Durability
    operations: dict[str, _Operation] = field(default_factory=dict)
    state_class: type | None = field(init=False, default=None)
    """The class every new state must be an instance of (None: `state_type` is no class, such
    as `Any` or a union, and is not checked); worked out once, not on each call."""

    def __post_init__(self) -> None:
        state_type = self.state_type
        if state_type is not Any and isinstance(state_type, type):
            self.state_class = state_type

    def run(self, state: object, op: str, payload: bytes) -> HandlerResult:
        """Run one operation; every failure is an answer, never an exception."""
        operation = self.operations.get(op)
        if operation is None:
            return _error(_UNKNOWN_OP, state, f"part {self.name!r} has no operation {op!r}")
        try:
            value = operation.decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            return _error(_BAD_REQUEST, state, f"{self.name}.{op}: bad payload: {error}")
        except UnicodeDecodeError as error:
            # msgspec lets a string that is not UTF-8 escape as UnicodeDecodeError.
            reason = f"a string is not UTF-8 ({error.reason} at byte {error.start})"
            return _error(_BAD_REQUEST, state, f"{self.name}.{op}: bad payload: {reason}")
        except RecursionError:
            return _error(_BAD_REQUEST, state, f"{self.name}.{op}: bad payload: nested too deeply")
        try:
            outcome = operation.function(state, value)
            if operation.is_async:
                outcome = _drive(outcome, f"{self.name}.{op}")
        except HandlerError as error:
            return _error(_APP_ERROR, state, error.message, error.detail)
        except _SuspendedError as error:
            return _error(_APP_ERROR, state, str(error))
        except Exception:
            _log.exception("handler %s.%s failed", self.name, op)
            return _error(_APP_ERROR, state, f"{self.name}.{op} failed on the server")
        if not isinstance(outcome, tuple | list) or len(outcome) != 2:
            # The usual slip: returning the new state alone. Said to the caller, who would
            # otherwise see only "failed on the server".
            message = (
                f"{self.name}.{op} returned {_shape(outcome)}, not a (new_state, result) pair: "
                "refused, the state is unchanged"
            )
            _log.error("handler %s", message)
            return _error(_APP_ERROR, state, message)
        new_state, result = outcome
        state_class = self.state_class
        if state_class is not None and not isinstance(new_state, state_class):
            # Kept, every later call on the part would fail on it (its handlers expect a
            # `state_type`), and its snapshots would not decode on a replica: refused, the
            # state stays as it was. Replicas re-execute the handler and refuse it alike.
            message = (
                f"{self.name}.{op} returned a new state of type {type(new_state).__name__}, "
                f"not {state_class.__name__}: refused, the state is unchanged"
            )
            _log.error("handler %s", message)
            return _error(_APP_ERROR, state, message)
        if result is NOT_YET:
            if operation.wait_ms is None:
                message = f"{self.name}.{op} returned NOT_YET but is no waiting read (wait_ms=)"
                _log.error("handler %s", message)
                return _error(_APP_ERROR, state, message)
            return HandlerResult(state=new_state, status=_OK, result=_NONE, waiting=True)
        try:
            encoded = _encoder.encode(result)
        except NOT_ENCODABLE as error:
            # msgspec's reason says what to fix; the traceback would only point at this line.
            message = f"{self.name}.{op}: the result could not be encoded: {error}"
            _log.error("handler %s", message)
            return _error(_APP_ERROR, state, message)
        except Exception:
            # Encoding runs the application's code too (a time zone's offset, say): what that
            # raises is a failed handler, not a server fault.
            _log.exception("handler %s.%s failed", self.name, op)
            return _error(_APP_ERROR, state, f"{self.name}.{op} failed on the server")
        return HandlerResult(state=new_state, status=_OK, result=encoded)


def _shape(value: object) -> str:
    """How a handler's wrong return value is described: its type, and its length if a
    sequence."""
    kind = type(value).__name__
    if isinstance(value, tuple | list):
        return f"a {kind} of {len(value)}"
    return f"a {kind}"


class _SuspendedError(Exception):
    """An async handler awaited something that suspends."""


def _drive(coroutine: Coroutine[Any, Any, Any], name: str) -> Any:
    """Run a coroutine that must finish without suspending; return its value."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value
    coroutine.close()
    message = (
        f"handler {name} suspended at an await: handlers run synchronously and are re-executed "
        "by replicas, so they must not await I/O, sleeps or locks; the request failed"
    )
    _log.error("%s", message)
    raise _SuspendedError(message)


class App:
    """Parts with their state factories, durability and handlers (see the module docstring)."""

    def __init__(self, name: str = "app") -> None:
        self.name = name
        """A label for logs."""
        self._parts: dict[str, _Part] = {}

    @property
    def parts(self) -> tuple[str, ...]:
        """The declared part names, in declaration order."""
        return tuple(self._parts)

    def part(
        self,
        name: str,
        *,
        initial: Callable[[], object] = dict,
        state_type: Any = None,
        durability: str | Durability = Durability.ASYNC,
    ) -> None:
        """Declare a part: `initial()` builds a new part's state.

        `state_type` is what replicas decode snapshots of the state as; by default the class
        `initial` when it is one, else the return annotation of the function `initial`, else
        the class of what `initial()` returns (called once here) when that is not a plain
        msgpack value (a Struct, a dataclass), else plain msgpack values. `durability` is
        `"async"` (answer at once; a crash may lose the replication lag) or `"replicated"`
        (answer once a replica holds the write; a crash loses nothing acknowledged).
        """
        try:
            check_part_name(name)
        except Exception as error:
            raise ConfigError(str(error)) from error
        if name in self._parts:
            raise ConfigError(f"part {name!r} is declared twice")
        if not callable(initial):
            raise ConfigError(
                f"initial of part {name!r} must be a callable that builds a new state (dict, a "
                f"class, a function), got {initial!r}"
            )
        try:
            mode = Durability(durability)
        except ValueError as error:
            raise ConfigError(f"durability must be 'async' or 'replicated': {error}") from error
        if state_type is None:
            state_type = _state_type(name, initial)
        self._parts[name] = _Part(
            name=name, initial=initial, state_type=state_type, durability=mode
        )

    def handler(
        self,
        part: str,
        op: str,
        *,
        read_only: bool = False,
        payload_type: Any = None,
        wait_ms: int | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as the handler of `op` on `part`.

        `wait_ms` makes a read-only op a waiting read (see the module docstring): it may return
        `NOT_YET`, and waits up to `wait_ms` (1 to `WAIT_MS_MAX`) for a write to answer it."""
        if wait_ms is not None:
            if not read_only:
                raise ConfigError(f"{part}.{op}: wait_ms is for read_only=True operations only")
            if isinstance(wait_ms, bool) or not isinstance(wait_ms, int):
                raise ConfigError(f"{part}.{op}: wait_ms must be an int, got {wait_ms!r}")
            if not 1 <= wait_ms <= WAIT_MS_MAX:
                raise ConfigError(f"{part}.{op}: wait_ms must be 1 to {WAIT_MS_MAX}, got {wait_ms}")
        declared = self._parts.get(part)
        if declared is None:
            raise ConfigError(f"declare part {part!r} with App.part before its handlers")
        if not op or len(op.encode()) > 64:
            raise ConfigError(f"operation names are 1 to 64 bytes, got {op!r}")
        if op in declared.operations:
            raise ConfigError(f"{part}.{op} has a handler already")

        def register(function: F) -> F:
            wanted = payload_type if payload_type is not None else _payload_type(function)
            declared.operations[op] = _Operation(
                name=op,
                function=function,
                decoder=msgspec.msgpack.Decoder(wanted),
                is_async=inspect.iscoroutinefunction(function),
                read_only=read_only,
                wait_ms=wait_ms,
            )
            return function

        return register

    def part_specs(self) -> dict[str, PartSpec]:
        """What a `ServerCore` runs: one `PartSpec` per part."""
        if not self._parts:
            raise ConfigError(f"app {self.name!r} declares no parts")
        return {
            name: PartSpec(
                handler=part.run,
                initial_state=part.initial,
                durability=part.durability,
                state_type=part.state_type,
                read_ops=frozenset(o.name for o in part.operations.values() if o.read_only),
                wait_ops={
                    o.name: o.wait_ms for o in part.operations.values() if o.wait_ms is not None
                },
            )
            for name, part in self._parts.items()
        }


_PLAIN_VALUES = (dict, list, tuple, str, bytes, int, float, bool, type(None))
"""What msgpack decodes to by itself: a state of these types needs no `state_type`."""


def _state_type(name: str, initial: Callable[[], object]) -> Any:
    """The type replicas decode part `name`'s snapshots as, from `initial` (see `App.part`).

    A factory's state decoded as plain msgpack values would be a dict on every replica that
    installed a snapshot (and only there): its handlers would fail after a failover."""
    if isinstance(initial, type):
        return Any if initial in _PLAIN_VALUES else initial
    if inspect.isfunction(initial) or inspect.ismethod(initial):
        try:
            returned = typing.get_type_hints(initial).get("return")
        except NameError as error:
            raise ConfigError(
                f"cannot resolve the return annotation of part {name!r}'s initial "
                f"{initial.__qualname__}: {error!r}; pass state_type="
            ) from error
        if returned is not None and returned is not object and returned is not Any:
            try:
                msgspec.msgpack.Decoder(returned)
            except TypeError:
                pass  # not a type msgspec decodes as (typing.Self, say): what it builds
            else:
                return returned
    try:
        sample = initial()
    except Exception as error:
        raise ConfigError(
            f"initial of part {name!r} raised {error!r}; pass state_type= to say the state's type"
        ) from error
    return Any if isinstance(sample, _PLAIN_VALUES) else type(sample)


def _payload_type(function: HandlerFunction) -> Any:
    """The annotation of the handler's second parameter, or Any; ConfigError when the
    annotations cannot be resolved (a type defined where the module's globals do not see it,
    under `from __future__ import annotations`): decoded as Any, the payload would reach the
    handler as a dict and fail there."""
    try:
        hints = typing.get_type_hints(function)
    except NameError as error:
        name = getattr(function, "__qualname__", repr(function))
        raise ConfigError(
            f"cannot resolve the annotations of handler {name}: {error!r}; "
            "define the types at module level, or pass payload_type="
        ) from error
    except TypeError:
        return Any  # not a function typing reads (a functools.partial, say)
    parameters = list(inspect.signature(function).parameters)
    if len(parameters) < 2:
        raise ConfigError(f"handler {function.__name__} must take (state, payload)")
    hint = hints.get(parameters[1], Any)
    return Any if hint is object else hint
