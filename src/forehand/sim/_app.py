"""The simulated application: a shop whose sessions have an `auth`, a `cart` and a video part.

Every part also has a waiting read, `wait <version>`: it answers the part's version (a number
that no write makes smaller, `version_of`) once that version is at least the payload's, and says
"nothing yet" (`HandlerResult.waiting`, with an empty result) before; the primary parks it until a
write or its `wait_ms` (`WAIT_MS`) answers it.

Handlers are deterministic and pure (they build a new state instead of changing the old one), so
replicas that re-run the log reach the same state and the same answers, and a read leaves the
state untouched. Every answer depends on the state, so a replica applying an entry on a state
that differs from its primary's reports a divergence. States are plain msgpack values (dicts,
ints, strings), as snapshots decode them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from forehand.core import Durability, HandlerResult, PartSpec
from forehand.wire import ResponseStatus

__all__ = [
    "APP_PARTS",
    "NOTHING_YET",
    "OPERATIONS",
    "PART_DURABILITY",
    "STALL_OP",
    "WAIT_MS",
    "WAIT_OP",
    "app_specs",
    "operation_for",
    "version_of",
]

APP_PARTS: tuple[str, ...] = ("auth", "cart", "feature/video")
"""The parts every simulated session opens."""

PART_DURABILITY: Mapping[str, Durability] = {
    "auth": Durability.ASYNC,
    "cart": Durability.REPLICATED,
    "feature/video": Durability.ASYNC,
}
"""Money is `replicated`; a login or a playback position may lose the replication lag."""

CART_ITEMS = ("apple", "bread", "cheese", "dates", "eggs")
"""Items the simulated users put in their carts."""

STALL_OP = "stall"
"""A cart write that adds an item as `add` does, and that the `stall` scenario makes hold its
server's CPU (`Simulator.stall_us`): a handler that blocks the event loop."""
WAIT_OP = "wait"
"""Every part's waiting read: `wait <version>` answers the part's version once it reaches
`<version>`."""
WAIT_MS: Mapping[str, int] = {"auth": 300, "cart": 1_000, "feature/video": 2_500}
"""How long each part's `wait` may be parked (its `wait_ms`): shorter and longer than a handoff."""
NOTHING_YET = b""
"""The answer of a `wait` whose wait ended without the version (the app's encoding of None)."""
CART_VERSION_ORDER = 1_000_000
"""A cart's version is `orders * CART_VERSION_ORDER + items`: an add raises the item count, a
checkout the orders (and empties the cart), so every write makes it larger."""

_OK = int(ResponseStatus.OK)
_UNKNOWN = int(ResponseStatus.UNKNOWN_OP)


def _wait(state: Any, version: int, payload: bytes) -> HandlerResult:
    """The answer of `wait <wanted>` on a part at `version` (the state is left alone)."""
    if version >= int(payload):
        return HandlerResult(state=state, status=_OK, result=str(version).encode())
    return HandlerResult(state=state, status=_OK, result=NOTHING_YET, waiting=True)


def _auth(state: Any, op: str, payload: bytes) -> HandlerResult:
    """`login <user>` and `logout` change the state; `whoami` reads it; `wait` waits for a
    number of logins (a logout leaves it)."""
    user = state.get("user", "")
    logins = int(state.get("logins", 0))
    if op == WAIT_OP:
        return _wait(state, logins, payload)
    if op == "login":
        name = payload.decode()
        new = {"user": name, "logins": logins + 1}
        return HandlerResult(state=new, status=_OK, result=f"{name}#{logins + 1}".encode())
    if op == "logout":
        new = {"user": "", "logins": logins}
        return HandlerResult(state=new, status=_OK, result=f"bye {user}".encode())
    if op == "whoami":
        return HandlerResult(state=state, status=_OK, result=f"{user}#{logins}".encode())
    return HandlerResult(state=state, status=_UNKNOWN, result=b"")


def _cart(state: Any, op: str, payload: bytes) -> HandlerResult:
    """`add <item>` and `checkout` change the cart; `view` reads it; `wait` waits for a cart
    version."""
    items: dict[str, int] = dict(state.get("items", {}))
    orders = int(state.get("orders", 0))
    if op == WAIT_OP:
        version = orders * CART_VERSION_ORDER + sum(items.values())
        return _wait(state, version, payload)
    if op in ("add", STALL_OP):
        item = payload.decode()
        items[item] = items.get(item, 0) + 1
        new = {"items": items, "orders": orders}
        return HandlerResult(state=new, status=_OK, result=_cart_text(items, orders))
    if op == "checkout":
        count = sum(items.values())
        new = {"items": {}, "orders": orders + 1}
        return HandlerResult(state=new, status=_OK, result=f"order {orders + 1}: {count}".encode())
    if op == "view":
        return HandlerResult(state=state, status=_OK, result=_cart_text(items, orders))
    return HandlerResult(state=state, status=_UNKNOWN, result=b"")


def _cart_text(items: Mapping[str, int], orders: int) -> bytes:
    listed = ",".join(f"{name}={items[name]}" for name in sorted(items))
    return f"{orders}|{listed}".encode()


def _video(state: Any, op: str, payload: bytes) -> HandlerResult:
    """`seek <ms>` moves the playback position; `position` reads it; `wait` waits for a number
    of seeks."""
    position_ms = int(state.get("position_ms", 0))
    seeks = int(state.get("seeks", 0))
    if op == WAIT_OP:
        return _wait(state, seeks, payload)
    if op == "seek":
        position_ms = (position_ms + int(payload)) % 7_200_000
        new = {"position_ms": position_ms, "seeks": seeks + 1}
        return HandlerResult(state=new, status=_OK, result=f"{position_ms}@{seeks + 1}".encode())
    if op == "position":
        return HandlerResult(state=state, status=_OK, result=f"{position_ms}@{seeks}".encode())
    return HandlerResult(state=state, status=_UNKNOWN, result=b"")


def version_of(part: str, op: str, result: bytes) -> int | None:
    """The part's version shown by an OK answer of `op`, or None when the answer shows none (a
    logout, a `wait` that got nothing yet)."""
    text = result.decode()
    if op == WAIT_OP:
        return int(text) if text else None
    if part == "auth":
        return None if op == "logout" else int(text.rpartition("#")[2])
    if part == "feature/video":
        return int(text.rpartition("@")[2])
    if op == "checkout":
        return int(text.split(":")[0].removeprefix("order ")) * CART_VERSION_ORDER
    orders, _, listed = text.partition("|")
    items = sum(int(pair.partition("=")[2]) for pair in listed.split(",") if pair)
    return int(orders) * CART_VERSION_ORDER + items


def _empty() -> dict[str, Any]:
    return {}


_HANDLERS: Mapping[str, Callable[[Any, str, bytes], HandlerResult]] = {
    "auth": _auth,
    "cart": _cart,
    "feature/video": _video,
}
_READ_OPS: Mapping[str, frozenset[str]] = {
    "auth": frozenset({"whoami", WAIT_OP}),
    "cart": frozenset({"view", WAIT_OP}),
    "feature/video": frozenset({"position", WAIT_OP}),
}

OPERATIONS: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("auth", "read"): ("whoami",),
    ("auth", "write"): ("login", "login", "logout"),
    ("cart", "read"): ("view",),
    ("cart", "write"): ("add", "add", "add", "checkout"),
    ("feature/video", "read"): ("position",),
    ("feature/video", "write"): ("seek",),
    ("cart", STALL_OP): (STALL_OP,),
}
"""The concrete operations behind the workload's `read` and `write`, per part."""


def operation_for(part: str, kind: str, sequence: int) -> tuple[str, bytes, bool]:
    """The concrete `(op, payload, is_write)` for the workload's `sequence`-th request of a kind."""
    choices = OPERATIONS[(part, kind)]
    op = choices[sequence % len(choices)]
    if op == "login":
        payload = f"user{sequence % 7}".encode()
    elif op in ("add", STALL_OP):
        payload = CART_ITEMS[sequence % len(CART_ITEMS)].encode()
    elif op == "seek":
        payload = str(1_000 * (1 + sequence % 30)).encode()
    else:
        payload = b""
    return op, payload, kind in ("write", STALL_OP)


def app_specs(on_stall: Callable[[], None] | None = None) -> dict[str, PartSpec]:
    """The part specs every simulated server registers; `on_stall` is called when a handler
    runs `STALL_OP` (the simulator then holds the server, `Simulator.stall_requested`)."""
    handlers = dict(_HANDLERS)
    if on_stall is not None:
        cart = handlers["cart"]

        def stalling_cart(state: Any, op: str, payload: bytes) -> HandlerResult:
            if op == STALL_OP:
                on_stall()
            return cart(state, op, payload)

        handlers["cart"] = stalling_cart
    return {
        name: PartSpec(
            handler=handlers[name],
            initial_state=_empty,
            durability=PART_DURABILITY[name],
            read_ops=_READ_OPS[name],
            wait_ops={WAIT_OP: WAIT_MS[name]},
        )
        for name in APP_PARTS
    }
