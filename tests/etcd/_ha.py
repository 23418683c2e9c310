"""A highly available Forehand cluster for tests: managers electing a leader on real etcd.

`HACluster` is the runtime tests' `Cluster` (tests/runtime/_cluster.py) with several
`forehand manager --store etcd://...` processes instead of one manager on SQLite. All managers
share the node id `manager` (and its certificate); each listens, once it leads, on a port chosen
here in advance, and writes its ready file only while it leads. Servers and clients are given
every manager endpoint. The lease is 2 s, so a killed leader is replaced about 2 s later.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import forehand
from forehand.core import ClientConfig
from forehand.runtime.admin import AdminReply, AdminRequest, Status, admin_request
from forehand.stores._etcd import EtcdClient, EtcdConfig, EtcdError

if TYPE_CHECKING:
    from tests.etcd._members import EtcdMembers, free_ports
    from tests.runtime._cluster import FOREHAND, MANAGER_SETTINGS, Cluster, eventually, run_async
else:
    from _members import EtcdMembers, free_ports

    from _cluster import FOREHAND, MANAGER_SETTINGS, Cluster, eventually, run_async

__all__ = ["LEASE_TTL_S", "HACluster"]

LEASE_TTL_S = 2
"""The leader's lease in these tests."""
HA_MANAGER_SETTINGS = (
    *MANAGER_SETTINGS,
    f"lease_ttl_s={LEASE_TTL_S}",
    # Servers reconnect to the new leader within a few backoffs; give them that long.
    "core.failure_timeout_ms=3000",
    "core.suspect_timeout_ms=1500",
)
HA_SERVER_SETTINGS = ("driver.dial_backoff_max_ms=300",)


class HACluster(Cluster):
    """Managers on etcd, their servers, and their leader (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        certs_dir: Path,
        etcd: EtcdMembers,
        managers: tuple[str, ...] = ("manager-a", "manager-b"),
        **options: Any,
    ) -> None:
        super().__init__(
            directory,
            certs_dir=certs_dir,
            transport="tls",
            server_settings=HA_SERVER_SETTINGS,
            **options,
        )
        self.etcd = etcd
        self.manager_names = managers
        ports = free_ports(len(managers))
        self.manager_listen = {
            name: f"127.0.0.1:{port}" for name, port in zip(managers, ports, strict=True)
        }
        self.manager_address = ",".join(self.manager_listen.values())
        self._etcd_client = EtcdClient(EtcdConfig(endpoints=tuple(etcd.endpoints)))

    # -- processes -----------------------------------------------------------------------

    def start(self) -> None:
        """Start every manager, wait for one to lead, then start the servers."""
        try:
            for name in self.manager_names:
                self.start_manager(name)
            self.wait_leader()
            for server_id in self.server_ids:
                self._launch(server_id, self._server_command(server_id))
            for server_id in self.server_ids:
                self.addresses[server_id] = self._wait_ready(server_id)
            run_async(self.wait_active(self.server_ids))
        except BaseException:
            self.stop()
            raise

    def start_manager(self, name: str) -> None:
        """Start (or restart) manager `name`; it stands by until it wins the election."""
        command = [
            *FOREHAND,
            "manager",
            "--certs-dir",
            str(self.certs_dir),
            "--listen",
            self.manager_listen[name],
            "--store",
            self.etcd.url,
            "--ready-file",
            str(self.directory / f"{name}.ready"),
            "--log-level",
            self.log_level,
        ]
        for setting in HA_MANAGER_SETTINGS:
            command += ["--set", setting]
        self._launch(name, command)

    def leader(self) -> dict[str, Any] | None:
        """What the leader key says, or None (nobody leads, or etcd has no quorum)."""
        try:
            record, _ = self._etcd_client.get("/forehand/leader")
        except EtcdError:
            return None
        return None if record is None else dict(json.loads(record["value"]))

    def leading(self) -> list[str]:
        """Running managers that are serving (their ready file exists; a killed one's stays)."""
        return [
            name
            for name in self.manager_names
            if (self.directory / f"{name}.ready").exists()
            and name in self.processes
            and self.processes[name].poll() is None
        ]

    def wait_leader(self, *, timeout_s: float = 30.0, other_than: str = "") -> str:
        """Wait until a manager (not `other_than`) serves and the leader key names it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = self.leader()
            # A frozen (SIGSTOP) former leader still has its ready file: `other_than` it.
            serving = [name for name in self.leading() if name != other_than]
            if (
                record is not None
                and len(serving) == 1
                and record["endpoint"] == self.manager_listen[serving[0]]
            ):
                return serving[0]
            for name in self.manager_names:
                process = self.processes.get(name)
                if process is not None and process.poll() not in (None, -9):
                    raise AssertionError(f"{name} exited:\n{self.log(name)}")
            time.sleep(0.02)
        logs = "\n".join(f"--- {name}\n{self.log(name)[-3000:]}" for name in self.manager_names)
        raise AssertionError(f"no manager leads:\n{logs}")

    def stop(self) -> None:
        """Stop the Forehand processes (the etcd members belong to their fixture)."""
        super().stop()
        self._etcd_client.close()

    # -- talking to it ---------------------------------------------------------------------

    async def admin(self, request: AdminRequest) -> AdminReply:
        """Send an operator command to the leading manager."""
        serving = self.leading()
        assert len(serving) == 1, serving
        return await admin_request(
            self.manager_listen[serving[0]], request, certs_dir=self.certs_dir
        )

    async def wait_active(self, servers: tuple[str, ...]) -> None:
        """Wait until the leader sees every server of `servers` alive and active."""

        async def all_active() -> bool:
            if len(self.leading()) != 1:
                return False
            try:
                reply = await self.admin(Status())
            except Exception:
                return False
            states = {s.server_id: (s.member_state, s.map_state) for s in reply.servers}
            return all(states.get(server) == ("alive", "active") for server in servers)

        await eventually(all_active, what=f"servers {servers} active", timeout_s=45)

    def connect(self, **options: Any) -> forehand.Client:
        """A client given every manager endpoint."""
        config = options.pop(
            "config", ClientConfig(ping_interval_ms=200, request_timeout_ms=20_000)
        )
        return forehand.connect(
            list(self.manager_listen.values()),
            ca=self.certs_dir / "ca.pem",
            transport=self.transport,
            config=config,
            **options,
        )
