"""A rolling upgrade that adds a part type: new parts go to the servers that run the new app.

Three servers run the app's new version, which adds the part `notes`; the fourth still runs the
old one. Sessions opened meanwhile with `notes` have it placed (primary and replicas) on the
upgraded servers only, and every call to it succeeds. Before, the hash put about a quarter of
the new parts on the old server, and every call to them failed UNKNOWN_OP.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.runtime._cluster import COUNTER_APP, SERVERS, Cluster, make_certs, run_async
else:
    from _cluster import COUNTER_APP, SERVERS, Cluster, make_certs, run_async

APP = COUNTER_APP
NOTES = """

app.part("notes", initial=Counter, durability="replicated")


@app.handler("notes", "add")
def note(notes: Counter, amount: int) -> tuple[Counter, int]:
    notes.value += amount
    return notes, notes.value
"""
OLD = "s9"
SESSIONS = 24


class _Upgrading(Cluster):
    """`OLD` runs the app's old version, every other server the new one."""

    def _server_command(self, server_id: str) -> list[str]:
        command = super()._server_command(server_id)
        command[command.index("--app") + 1] = "old_app:app" if server_id == OLD else "new_app:app"
        return command


def test_sessions_opened_mid_upgrade_place_the_new_part_on_upgraded_servers(
    tmp_path: Path,
) -> None:
    (tmp_path / "old_app.py").write_text(APP)
    (tmp_path / "new_app.py").write_text(APP + NOTES)
    cluster = _Upgrading(
        tmp_path,
        certs_dir=make_certs(tmp_path / "certs"),
        transport="tls",
        servers=(*SERVERS, OLD),
        app_dir=tmp_path,
    )
    cluster.start()

    async def scenario() -> tuple[set[str], set[str]]:
        notes_servers: set[str] = set()
        counter_servers: set[str] = set()
        async with cluster.connect() as client:
            for _ in range(SESSIONS):
                session = await client.open_session(parts=["counter", "notes"])
                assert await session.call("notes", "add", 2) == 2
                assert await session.call("counter", "add", 1) == 1
                notes = session.placements()["notes"]
                notes_servers.update((notes.primary, *notes.backups))
                counter = session.placements()["counter"]
                counter_servers.update((counter.primary, *counter.backups))
        return notes_servers, counter_servers

    try:
        notes_servers, counter_servers = run_async(scenario(), timeout_s=120)
    finally:
        cluster.stop()
    assert notes_servers == set(SERVERS)
    # The old server still takes the parts its app declares.
    assert OLD in counter_servers
