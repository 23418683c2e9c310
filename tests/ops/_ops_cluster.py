"""A live cluster with the operator surfaces on: the manager's admin API, servers' /metrics.

It reuses the runtime tests' `Cluster` (real `forehand manager` and `forehand server`
processes on 127.0.0.1), adding the settings that turn the HTTP listeners on (port 0: the
system picks; each process writes its URL to `<ready file>.http`) and an admin token file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

if TYPE_CHECKING:
    from tests.runtime._cluster import (
        HANG_TIMEOUT_S,
        SERVERS,
        CartLoad,
        Cluster,
        eventually,
        make_certs,
        run_async,
    )
else:
    from _cluster import (
        HANG_TIMEOUT_S,
        SERVERS,
        CartLoad,
        Cluster,
        eventually,
        make_certs,
        run_async,
    )

from forehand.ops import url_file

__all__ = [
    "HANG_TIMEOUT_S",
    "SERVERS",
    "TOKEN",
    "CartLoad",
    "OpsCluster",
    "eventually",
    "make_certs",
    "run_async",
]

TOKEN = "test-admin-token-0123456789abcdef"
"""The admin token of the test cluster."""


class OpsCluster(Cluster):
    """`Cluster` with the admin API on the manager and /metrics on every server; four servers,
    so that a drained one's replica roles have somewhere to go and its drain finishes."""

    def __init__(
        self,
        directory: Path,
        *,
        certs_dir: Path,
        servers: tuple[str, ...] = (*SERVERS, "s9"),
        manager_settings: tuple[str, ...] = (),
    ) -> None:
        """`manager_settings` are further `--set key=value` settings of the manager."""
        super().__init__(
            directory,
            certs_dir=certs_dir,
            transport="tls",
            servers=servers,
            server_settings=("metrics_port=0",),
            manager_settings=manager_settings,
        )
        self.token_file = directory / "admin-token"
        self.token_file.write_text(TOKEN + "\n", encoding="utf-8")
        self.audit_file = directory / "audit.jsonl"
        self.api_url = ""
        self.metrics_urls: dict[str, str] = {}

    def _manager_command(self) -> list[str]:
        command = super()._manager_command()
        command += ["--set", "admin_http_port=0", "--log-format", "json"]
        command += ["--set", f'admin_token_file="{self.token_file}"']
        command += ["--set", f'audit_log_path="{self.audit_file}"']
        return command

    def start(self) -> None:
        """Start the processes; read the URLs they serve HTTP on."""
        super().start()
        self.api_url = self._url("manager")
        for server_id in self.server_ids:
            self.metrics_urls[server_id] = self._url(server_id)

    def _url(self, name: str) -> str:
        return url_file(self.directory / f"{name}.ready").read_text(encoding="utf-8").strip()
