"""The simulated application: a shop whose sessions have an `auth`, a `cart` and a video part.

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
    "OPERATIONS",
    "PART_DURABILITY",
    "app_specs",
    "operation_for",
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

_OK = int(ResponseStatus.OK)
_UNKNOWN = int(ResponseStatus.UNKNOWN_OP)


def _auth(state: Any, op: str, payload: bytes) -> HandlerResult:
    """`login <user>` and `logout` change the state; `whoami` reads it."""
    user = state.get("user", "")
    logins = int(state.get("logins", 0))
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
    """`add <item>` and `checkout` change the cart; `view` reads it."""
    items: dict[str, int] = dict(state.get("items", {}))
    orders = int(state.get("orders", 0))
    if op == "add":
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
    """`seek <ms>` moves the playback position; `position` reads it."""
    position_ms = int(state.get("position_ms", 0))
    seeks = int(state.get("seeks", 0))
    if op == "seek":
        position_ms = (position_ms + int(payload)) % 7_200_000
        new = {"position_ms": position_ms, "seeks": seeks + 1}
        return HandlerResult(state=new, status=_OK, result=f"{position_ms}@{seeks + 1}".encode())
    if op == "position":
        return HandlerResult(state=state, status=_OK, result=f"{position_ms}@{seeks}".encode())
    return HandlerResult(state=state, status=_UNKNOWN, result=b"")


def _empty() -> dict[str, Any]:
    return {}


_HANDLERS: Mapping[str, Callable[[Any, str, bytes], HandlerResult]] = {
    "auth": _auth,
    "cart": _cart,
    "feature/video": _video,
}
_READ_OPS: Mapping[str, frozenset[str]] = {
    "auth": frozenset({"whoami"}),
    "cart": frozenset({"view"}),
    "feature/video": frozenset({"position"}),
}

OPERATIONS: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("auth", "read"): ("whoami",),
    ("auth", "write"): ("login", "login", "logout"),
    ("cart", "read"): ("view",),
    ("cart", "write"): ("add", "add", "add", "checkout"),
    ("feature/video", "read"): ("position",),
    ("feature/video", "write"): ("seek",),
}
"""The concrete operations behind the workload's `read` and `write`, per part."""


def operation_for(part: str, kind: str, sequence: int) -> tuple[str, bytes, bool]:
    """The concrete `(op, payload, is_write)` for the workload's `sequence`-th request of a kind."""
    choices = OPERATIONS[(part, kind)]
    op = choices[sequence % len(choices)]
    if op == "login":
        payload = f"user{sequence % 7}".encode()
    elif op == "add":
        payload = CART_ITEMS[sequence % len(CART_ITEMS)].encode()
    elif op == "seek":
        payload = str(1_000 * (1 + sequence % 30)).encode()
    else:
        payload = b""
    return op, payload, kind == "write"


def app_specs() -> dict[str, PartSpec]:
    """The part specs every simulated server registers."""
    return {
        name: PartSpec(
            handler=_HANDLERS[name],
            initial_state=_empty,
            durability=PART_DURABILITY[name],
            read_ops=_READ_OPS[name],
        )
        for name in APP_PARTS
    }
