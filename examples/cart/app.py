"""The cart example's server side: three parts of one shopping session.

- `auth` (async durability): `login` and `whoami`.
- `cart` (replicated durability: an acknowledged `add` survives the crash of its server):
  `add`, `remove`, `list` (read-only) and `checkout`.
- `feature/video` (async): `seek` and `position` (read-only), a playback position that may lose
  the replication lag in a crash.
- `chat` (async): a support chat, `post` and `since`, a waiting read: a client calls
  `since(index)` and gets the messages after `index` as soon as there are any (or None after
  `CHAT_WAIT_MS`, when it calls again).

Handlers follow the `forehand.App` contract: `(state, payload) -> (new_state, result)`,
deterministic, no I/O. Run it with `forehand server --app examples.cart.app:app ...`.
"""

from __future__ import annotations

import msgspec

import forehand

app = forehand.App("cart-example")

QUANTITY_MAX = 1_000_000
"""Most units of one product in a cart."""
CHAT_MESSAGES_KEPT = 100
"""Most chat messages a session keeps (older ones are dropped: a state must stay small)."""
CHAT_WAIT_MS = 20_000
"""How long `chat.since` waits for a new message before it answers None."""


class Auth(msgspec.Struct):
    """Who is logged in to the session."""

    user: str = ""
    """The user name, empty before `login`."""
    logins: int = 0
    """How many times `login` ran."""


class Item(msgspec.Struct, frozen=True):
    """One line of the cart."""

    sku: str
    """The product."""
    quantity: int = 1
    """How many."""


class Cart(msgspec.Struct):
    """The session's cart."""

    items: dict[str, int] = msgspec.field(default_factory=dict)
    """Quantity by product."""
    orders: int = 0
    """Checkouts so far."""


class Video(msgspec.Struct):
    """Playback state of the session's video feature."""

    position_ms: int = 0
    """Where playback is."""


class Chat(msgspec.Struct):
    """The session's support chat: the newest messages and the index of the first one kept."""

    first: int = 0
    """The index of `messages[0]` among every message ever posted."""
    messages: list[str] = msgspec.field(default_factory=list)
    """The newest messages, at most `CHAT_MESSAGES_KEPT`."""


class Messages(msgspec.Struct, frozen=True):
    """What `chat.since` answers: messages and the index to ask from next."""

    messages: list[str]
    """The messages after the index asked for (those still kept)."""
    next: int
    """The index to pass to the next `since`."""


app.part("auth", initial=Auth)
app.part("cart", initial=Cart, durability="replicated")
app.part("feature/video", initial=Video)
app.part("chat", initial=Chat)


@app.handler("auth", "login")
def login(state: Auth, user: str) -> tuple[Auth, str]:
    """Log `user` in; answers a greeting."""
    if not user:
        raise forehand.HandlerError("empty user name")
    state.user = user
    state.logins += 1
    return state, f"welcome {user}"


@app.handler("auth", "whoami", read_only=True)
def whoami(state: Auth, payload: None) -> tuple[Auth, str]:
    """The logged-in user, or an empty string."""
    return state, state.user


@app.handler("cart", "add")
async def add(cart: Cart, item: Item) -> tuple[Cart, int]:
    """Add `item`; answers the number of units in the cart. (An `async def` handler works as
    long as it awaits nothing that suspends.)"""
    if not 1 <= item.quantity <= QUANTITY_MAX:
        raise forehand.HandlerError(f"quantity must be 1 to {QUANTITY_MAX}", detail=item.quantity)
    if cart.items.get(item.sku, 0) + item.quantity > QUANTITY_MAX:
        # Checked before the state changes: a failed handler's changes are kept, and a count
        # beyond 64 bits would leave a state msgpack cannot carry to a replica.
        raise forehand.HandlerError(f"at most {QUANTITY_MAX} units of one product", detail=item.sku)
    cart.items[item.sku] = cart.items.get(item.sku, 0) + item.quantity
    return cart, sum(cart.items.values())


@app.handler("cart", "remove")
def remove(cart: Cart, sku: str) -> tuple[Cart, int]:
    """Remove every unit of `sku`; answers the number of units left."""
    cart.items.pop(sku, None)
    return cart, sum(cart.items.values())


@app.handler("cart", "list", read_only=True)
def list_items(cart: Cart, payload: None) -> tuple[Cart, dict[str, int]]:
    """The cart's contents."""
    return cart, dict(cart.items)


@app.handler("cart", "checkout")
def checkout(cart: Cart, payload: None) -> tuple[Cart, dict[str, int]]:
    """Empty the cart into an order; answers the order number and the units ordered."""
    if not cart.items:
        raise forehand.HandlerError("the cart is empty")
    units = sum(cart.items.values())
    return Cart(orders=cart.orders + 1), {"order": cart.orders + 1, "units": units}


@app.handler("feature/video", "seek")
def seek(video: Video, position_ms: int) -> tuple[Video, int]:
    """Move playback to `position_ms`."""
    video.position_ms = max(0, position_ms)
    return video, video.position_ms


@app.handler("feature/video", "position", read_only=True)
def position(video: Video, payload: None) -> tuple[Video, int]:
    """Where playback is."""
    return video, video.position_ms


@app.handler("chat", "post")
def post(chat: Chat, text: str) -> tuple[Chat, int]:
    """Post `text`; answers its index."""
    chat.messages.append(text)
    if len(chat.messages) > CHAT_MESSAGES_KEPT:
        del chat.messages[0]
        chat.first += 1
    return chat, chat.first + len(chat.messages) - 1


@app.handler("chat", "since", read_only=True, wait_ms=CHAT_WAIT_MS)
def since(chat: Chat, index: int) -> tuple[Chat, Messages | forehand.NotYet]:
    """The messages from `index` on, or NOT_YET: the server answers when one is posted (the
    call returns None if none is within `CHAT_WAIT_MS`)."""
    end = chat.first + len(chat.messages)
    if index >= end:
        return chat, forehand.NOT_YET
    return chat, Messages(messages=chat.messages[max(index - chat.first, 0) :], next=end)
