"""The demo's cluster: certificates, a manager and servers as real processes on 127.0.0.1.

`DemoCluster` writes a cluster CA, node certificates and the token key file into its directory
(an existing CA and token key file are reused), then a TOML file per process, and starts `forehand
manager` and one server process per server: `python -m forehand.demo.server` (the `forehand
server` process with the demo's SIGUSR1 CPU burner) for the demo, plain `forehand server` when
the configuration has no burner (`forehand up`). Every server listens on port 0, as does the
manager unless told otherwise, and writes the address it got to a ready file, so no port is
guessed. Each runs in its own session (Ctrl-C reaches only the demo, which then stops
them in order) with its log in the directory. `stop()` always ends every process it started:
SIGINT (a server stops at once, without the drain its SIGTERM starts), a bounded wait, then
SIGKILL, and a wait for each, by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forehand.demo._burner import BurnerConfig
from forehand.errors import ConfigError
from forehand.ops import url_file
from forehand.runtime.admin import AdminReply, Rebalance, Status, admin_request
from forehand.runtime.certs import make_cluster_certs
from forehand.runtime.config import load_manager_config, load_server_config
from forehand.runtime.keys import CLUSTER_KEYS_FILE, add_cluster_key

__all__ = ["ClusterConfig", "ClusterStartError", "DemoCluster", "NodeProcess"]

ADMIN_NODE = "admin"
"""The operator certificate the demo polls the manager with."""
MANAGER_NODE = "manager"
"""The manager's node id."""
LOG_TAIL_LINES = 20
"""Lines of a process log shown when it fails to start."""


class ClusterStartError(RuntimeError):
    """A process of the cluster did not start, or the servers did not join in time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """What the demo cluster runs."""

    server_ids: tuple[str, ...] = ("s1", "s2", "s3", "s4")
    """One server process per id."""
    app: str = "examples.cart.app:app"
    """The application the servers host."""
    app_dir: Path = field(default_factory=Path.cwd)
    """Directory the application module is imported from."""
    transport: str = "tls"
    """Client-facing transport of every process."""
    manager_core: Mapping[str, Any] = field(default_factory=dict)
    """The manager's [core] table (`forehand.core.ManagerConfig` fields)."""
    manager_placement: Mapping[str, Any] = field(default_factory=dict)
    """The manager's [placement] table (`forehand.placement.PlacementConfig` fields)."""
    server_core: Mapping[str, Any] = field(default_factory=dict)
    """Every server's [core] table (`forehand.core.ServerConfig` fields)."""
    manager_settings: Mapping[str, Any] = field(default_factory=dict)
    """Keys of the manager's configuration file set on top of those above (nested mappings are
    tables): what `forehand up --manager-set` passes."""
    server_settings: Mapping[str, Any] = field(default_factory=dict)
    """The same for every server's file (`forehand up --server-set`)."""
    load_report_interval_ms: int = 250
    """How often servers sample their CPU use for heartbeats."""
    burner: BurnerConfig | None = field(default_factory=BurnerConfig)
    """The CPU burner's ramp, in every server (started by SIGUSR1); None runs plain `forehand
    server` processes."""
    manager_listen: str = "127.0.0.1:0"
    """host:port the manager listens on (port 0: the system picks)."""
    admin_token_file: Path | None = None
    """The manager's admin API token file (None: the API refuses every mutation)."""
    log_level: str = "info"
    """Level of the processes' logs."""
    admin_http_port: int = 0
    """Port of the manager's admin API and dashboard on 127.0.0.1; 0 lets the system pick, -1
    turns them off."""
    start_timeout_ms: int = 60_000
    """Starting the manager, then all servers until they are ACTIVE, takes at most this long."""
    stop_timeout_ms: int = 5_000
    """After SIGINT, a process has this long to exit before SIGKILL."""

    def __post_init__(self) -> None:
        if len(set(self.server_ids)) != len(self.server_ids) or not self.server_ids:
            raise ConfigError("ClusterConfig.server_ids must be distinct and not empty")
        if self.start_timeout_ms < 1 or self.stop_timeout_ms < 1:
            raise ConfigError("ClusterConfig timeouts must be positive")


@dataclass(slots=True, kw_only=True)
class NodeProcess:
    """One process of the cluster."""

    name: str
    """Its node id."""
    popen: subprocess.Popen[bytes]
    """The process."""
    log_path: Path
    """Its stdout and stderr."""
    ready_path: Path
    """The file it writes host:port to once listening."""
    address: str = ""
    """host:port, once ready."""
    killed_at_s: float | None = None
    """Loop time of a SIGKILL sent by the demo, if any."""

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """Whether it is still running."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of its log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, and TOML escapes DEL too."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return _toml_string(str(value))
    raise ConfigError(f"cannot write {value!r} to TOML")


def _set_on_top(
    top: dict[str, Any], tables: dict[str, dict[str, Any]], settings: Mapping[str, Any]
) -> None:
    """`settings` over a file's top-level keys and tables, in place."""
    for key, value in settings.items():
        if isinstance(value, Mapping):
            tables[key] = {**tables.get(key, {}), **value}
        else:
            top[key] = value


def write_toml(path: Path, top: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]]) -> None:
    """A TOML file of scalar keys and one level of tables."""
    lines = [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in top.items()]
    for name, table in tables.items():
        lines += ["", f"[{_toml_key(name)}]"]
        lines += [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _forehand_command() -> list[str]:
    """The `forehand` entry point of this interpreter's environment."""
    script = Path(sys.executable).with_name("forehand")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from forehand.cli import main; main()"]


class DemoCluster:
    """A manager and servers as subprocesses; see the module docstring."""

    def __init__(self, directory: Path, config: ClusterConfig) -> None:
        self.directory = directory
        """Where certificates, configuration files, logs and the store go."""
        self.config = config
        """What runs."""
        self.certs_dir = directory / "certs"
        """The cluster CA, node certificates and the token key file."""
        self.manager: NodeProcess | None = None
        """The manager process, once started."""
        self.servers: dict[str, NodeProcess] = {}
        """The server processes by id, once started."""

    @property
    def ca_path(self) -> Path:
        """The cluster CA certificate clients verify servers against."""
        return self.certs_dir / "ca.pem"

    @property
    def dashboard_url(self) -> str | None:
        """The manager's dashboard, once it listens (None when the admin API is off)."""
        if self.manager is None:
            return None
        path = url_file(self.manager.ready_path)
        if not path.exists():
            return None
        return path.read_text(encoding="utf-8").strip() + "/"

    @property
    def metrics_urls(self) -> dict[str, str]:
        """The /metrics URL of each server that serves one (its `metrics_port` set), by id."""
        urls = {}
        for server_id, process in self.servers.items():
            path = url_file(process.ready_path)
            if path.exists():
                urls[server_id] = path.read_text(encoding="utf-8").strip() + "/metrics"
        return urls

    @property
    def manager_address(self) -> str:
        """host:port of the manager."""
        assert self.manager is not None and self.manager.address
        return self.manager.address

    def processes(self) -> list[NodeProcess]:
        """Every process started, the manager first."""
        started = [self.manager] if self.manager is not None else []
        return started + list(self.servers.values())

    async def start(self) -> None:
        """Certificates, the manager, then every server; returns once all are ACTIVE members."""
        deadline_s = time.monotonic() + self.config.start_timeout_ms / 1000
        self.directory.mkdir(parents=True, exist_ok=True)
        nodes = [MANAGER_NODE, ADMIN_NODE, *self.config.server_ids]
        await asyncio.to_thread(make_cluster_certs, self.certs_dir, nodes, 2)
        keys_file = self.certs_dir / CLUSTER_KEYS_FILE
        if not keys_file.exists():
            add_cluster_key(keys_file)
        self.manager = self._start_manager()
        await self._wait_ready(self.manager, deadline_s)
        for server_id in self.config.server_ids:
            self.servers[server_id] = self._start_server(server_id)
        for process in self.servers.values():
            await self._wait_ready(process, deadline_s)
        await self._wait_active(deadline_s)

    def _start_manager(self) -> NodeProcess:
        config = self.config
        path = self.directory / "manager.toml"
        ready = self.directory / "manager.ready"
        top = {
            "node_id": MANAGER_NODE,
            "listen": config.manager_listen,
            "transport": config.transport,
            "certs_dir": self.certs_dir,
            "store": "sqlite",
            "store_path": self.directory / "manager.sqlite",
            "ready_file": ready,
            "log_level": config.log_level,
            "admin_http_port": config.admin_http_port,
        }
        if config.admin_token_file is not None:
            top["admin_token_file"] = config.admin_token_file
        tables = {"core": dict(config.manager_core), "placement": dict(config.manager_placement)}
        _set_on_top(top, tables, config.manager_settings)
        write_toml(path, top, {name: table for name, table in tables.items() if table})
        # A setting the process would refuse: ConfigError here, rather than its exit.
        load_manager_config(path)
        command = [*_forehand_command(), "manager", "--config", str(path)]
        return self._spawn(MANAGER_NODE, command, ready)

    def _start_server(self, server_id: str) -> NodeProcess:
        config = self.config
        path = self.directory / f"{server_id}.toml"
        ready = self.directory / f"{server_id}.ready"
        top = {
            "server_id": server_id,
            "certs_dir": self.certs_dir,
            "app": config.app,
            "app_dir": config.app_dir,
            "listen": "127.0.0.1:0",
            "manager": self.manager_address,
            "manager_id": MANAGER_NODE,
            "transport": config.transport,
            "load_report_interval_ms": config.load_report_interval_ms,
            "ready_file": ready,
            "log_level": config.log_level,
        }
        tables = {"core": dict(config.server_core)} if config.server_core else {}
        _set_on_top(top, tables, config.server_settings)
        write_toml(path, top, tables)
        load_server_config(path)
        burner = config.burner
        if burner is None:
            return self._spawn(
                server_id, [*_forehand_command(), "server", "--config", str(path)], ready
            )
        command = [
            sys.executable,
            "-m",
            "forehand.demo.server",
            "--config",
            str(path),
            f"--burn-ramp-ms={burner.ramp_ms}",
            f"--burn-duty-peak={burner.duty_peak}",
            f"--burn-chunk-ms-peak={burner.chunk_ms_peak}",
        ]
        return self._spawn(server_id, command, ready)

    def _spawn(self, name: str, command: list[str], ready: Path) -> NodeProcess:
        log_path = self.directory / f"{name}.log"
        ready.unlink(missing_ok=True)
        # An earlier run's URL file would read as this run's listener (metrics_urls).
        url_file(ready).unlink(missing_ok=True)
        # A server started again in this run appends to its killed incarnation's log.
        with log_path.open("ab" if name in self.servers else "wb") as log:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
            )
        return NodeProcess(name=name, popen=popen, log_path=log_path, ready_path=ready)

    async def _wait_ready(self, process: NodeProcess, deadline_s: float) -> None:
        while not process.ready_path.is_file():
            if not process.alive:
                raise ClusterStartError(
                    f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}"
                )
            if time.monotonic() > deadline_s:
                raise ClusterStartError(f"{process.name} did not start:\n{process.log_tail()}")
            await asyncio.sleep(0.05)
        process.address = process.ready_path.read_text(encoding="utf-8").strip()

    async def _wait_active(self, deadline_s: float) -> None:
        wanted = set(self.config.server_ids)
        while True:
            reply = await self.status()
            active = {
                server.server_id
                for server in reply.servers
                if server.member_state == "alive" and server.map_state == "active"
            }
            if wanted <= active:
                return
            if time.monotonic() > deadline_s:
                raise ClusterStartError(f"servers not active in time: {sorted(wanted - active)}")
            await asyncio.sleep(0.1)

    async def status(self) -> AdminReply:
        """The manager's membership and map version, over the admin link."""
        return await admin_request(
            self.manager_address,
            Status(),
            certs_dir=self.certs_dir,
            node_id=ADMIN_NODE,
            manager_id=MANAGER_NODE,
        )

    def signal_server(self, server_id: str, number: signal.Signals) -> None:
        """Send `number` to one server process."""
        process = self.servers[server_id]
        if process.alive:
            os.kill(process.pid, number)

    def kill_server(self, server_id: str, *, now_s: float) -> None:
        """SIGKILL one server (a crash nobody predicted) and reap it."""
        process = self.servers[server_id]
        process.killed_at_s = now_s
        if process.alive:
            os.kill(process.pid, signal.SIGKILL)
        process.popen.wait()

    async def restart_server(self, server_id: str) -> None:
        """Start a killed server again (a new incarnation, empty); returns once it is an ACTIVE
        member again."""
        deadline_s = time.monotonic() + self.config.start_timeout_ms / 1000
        process = self._start_server(server_id)
        self.servers[server_id] = process
        await self._wait_ready(process, deadline_s)
        await self._wait_active(deadline_s)

    def wait_server(self, server_id: str, timeout_s: float) -> int | None:
        """Wait up to `timeout_s` for one server process to exit (blocking: run it in a
        thread); its exit status, or None if it still runs."""
        try:
            return self.servers[server_id].popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    async def rebalance(self) -> AdminReply:
        """Ask the manager to even out the servers' primaries (planned handoffs)."""
        return await admin_request(
            self.manager_address,
            Rebalance(),
            certs_dir=self.certs_dir,
            node_id=ADMIN_NODE,
            manager_id=MANAGER_NODE,
        )

    def stop(self) -> None:
        """End every process started: SIGINT (a server's SIGTERM would first drain it onto
        servers stopping too), a bounded wait, SIGKILL, and reap each one."""
        processes = list(reversed(self.processes()))
        for process in processes:
            if process.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGINT)
        deadline_s = time.monotonic() + self.config.stop_timeout_ms / 1000
        for process in processes:
            remaining_s = max(0.0, deadline_s - time.monotonic())
            try:
                process.popen.wait(timeout=remaining_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.popen.wait()
