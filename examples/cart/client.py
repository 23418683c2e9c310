"""The cart example's client side: open a session, shop, watch handoffs, resume after a restart.

    python -m examples.cart.client --manager 127.0.0.1:7000 --ca certs/ca.pem [--transport quic]

It opens a session with the three parts, logs in, adds items in a loop (printing each handoff the
session goes through: the calls themselves never notice them), lists the cart, saves the
session's snapshot, and takes the session back with a second client as a restarted process
would, before checking out. Meanwhile a task waits on the session's support chat (`chat.since`, a
waiting read), which the shopping loop posts to now and then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import forehand

CALL_WAIT_MS = 25_000
"""A waiting read's call timeout. The server's wait (`CHAT_WAIT_MS`, 20 s) ends with None when
nothing was posted, and no later than this timeout allows (the call sends its wait budget)."""


async def follow_chat(session: forehand.Session) -> None:
    """Print the chat's messages as they come: each call returns once there is something new
    (or None when the wait ended, or the part moved: then it just calls again)."""
    index = 0
    while True:
        news = await session.call("chat", "since", index, timeout_ms=CALL_WAIT_MS)
        if news is not None:
            for message in news["messages"]:
                print(f"  chat: {message}")
            index = news["next"]


async def shop(manager: str, ca: str, transport: str, items: int) -> None:
    """Run the example against the cluster whose manager listens at `manager`."""
    async with forehand.connect(manager, ca=ca, transport=transport) as client:
        session = await client.open_session(parts=["auth", "cart", "feature/video", "chat"])
        session.on_handoff(
            lambda event: print(
                f"  handoff {event.kind.value}: {', '.join(event.parts)} "
                f"{event.source or '?'} -> {event.target or '?'} (map v{event.map_version})"
            )
        )
        print(f"session {session.id.hex()}")
        for part, placement in session.placements().items():
            print(f"  {part}: {placement.primary} (backups {', '.join(placement.backups)})")
        print(await session.call("auth", "login", "alice"))
        follower = asyncio.create_task(follow_chat(session))
        for number in range(items):
            units = await session.call("cart", "add", {"sku": f"sku-{number % 7}", "quantity": 1})
            await session.call("feature/video", "seek", number * 1000)
            if number % 100 == 0:
                print(f"  {units} unit(s) in the cart")
                await session.call("chat", "post", f"{units} unit(s) so far")
        print("cart:", await session.call("cart", "list"))
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        try:
            await session.call("cart", "add", {"sku": "broken", "quantity": 0})
        except forehand.AppError as error:
            print(f"refused as expected: {error.message}")
        saved = session.snapshot()

    # A new client, as after a restart: the snapshot (which holds a secret credential) is all
    # it needs to take the session back.
    async with forehand.connect(manager, ca=ca, transport=transport) as client:
        session = await client.resume_session(saved)
        print("resumed as", await session.call("auth", "whoami"))
        print("checkout:", await session.call("cart", "checkout"))
        await session.close()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--manager",
        default="127.0.0.1:7000",
        help="host:port of the manager (several, of standby managers too, separated by commas)",
    )
    parser.add_argument("--ca", default="certs/ca.pem", help="the cluster CA certificate")
    parser.add_argument("--transport", default="tls", choices=("tls", "quic"))
    parser.add_argument("--items", type=int, default=300, help="items to add")
    arguments = parser.parse_args()
    try:
        asyncio.run(shop(arguments.manager, arguments.ca, arguments.transport, arguments.items))
    except forehand.ForehandError as error:
        # No cluster at that address, a wrong CA, a call that failed: one line, not a traceback.
        raise SystemExit(f"cart client: {type(error).__name__}: {error}") from None


if __name__ == "__main__":
    main()
