"""`forehand drain` on a fleet of two: it says what waits, and exits 3 instead of waiting.

Draining one of two servers moves its primaries to the other, which cannot also be their
replica: the drained server stays the replica of every part (a `replicated` part needs one to
acknowledge a write). The command used to wait its whole `--wait-timeout-s` (600 s) for a drain
that could not finish; it now exits 3 once only those roles are left, saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from typer.testing import CliRunner

from forehand.cli import app

if TYPE_CHECKING:
    from tests.ops._ops_cluster import TOKEN, OpsCluster, make_certs, run_async
else:
    from _ops_cluster import TOKEN, OpsCluster, make_certs, run_async

WIDE = {"COLUMNS": "240", "NO_COLOR": "1"}


def test_a_drain_that_only_waits_exits_3_saying_what_waits(tmp_path: Path) -> None:
    """A session's parts on s1 and s2; `forehand drain s1` moves what it can, then exits 3
    naming the roles that wait and that s1 leads no part any more, and s1 is still their
    replica; undrained, it is ACTIVE again."""
    cluster = OpsCluster(tmp_path, certs_dir=make_certs(tmp_path / "certs"), servers=("s1", "s2"))
    cluster.start()
    try:

        async def open_session() -> None:
            async with cluster.connect() as client:
                session = await client.open_session(parts=["auth", "cart", "feature/video"])
                await session.call("cart", "add", {"sku": "tea", "quantity": 1})

        run_async(open_session())
        extra = ["--url", cluster.api_url, "--token", TOKEN]
        result = CliRunner().invoke(
            app, ["drain", "s1", "--wait-timeout-s", "120", *extra], env=WIDE
        )
        assert result.exit_code == 3, result.output
        assert "no other server can take" in result.output
        assert "do not stop it yet" in result.output
        # Its primaries all went to s2: the command says it serves nothing, though every
        # role it counted stays (each primary left a replica role behind).
        assert "s1 keeps 3 role(s)" in result.output
        assert "it leads no part any more" in result.output
        progress = httpx.get(f"{cluster.api_url}/api/servers/s1/drain", timeout=10).json()
        assert (progress["primaries_left"], progress["parts_waiting"]) == (0, 3), progress
        # Run again (a script re-run, say), the command follows the drain under way instead of
        # failing with 409: the same exit 3.
        result = CliRunner().invoke(
            app, ["drain", "s1", "--wait-timeout-s", "120", *extra], env=WIDE
        )
        assert result.exit_code == 3, result.output
        assert "s1 keeps 3 role(s)" in result.output
        result = CliRunner().invoke(app, ["undrain", "s1", *extra], env=WIDE)
        assert result.exit_code == 0, result.output
        run_async(cluster.wait_active(("s1", "s2")))
    finally:
        cluster.stop()
