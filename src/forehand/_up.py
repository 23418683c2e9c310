"""`forehand up`: a development cluster on loopback in one command.

It starts a session manager and `--servers` servers of the given app as separate processes on
127.0.0.1 (the demo's `DemoCluster`, without its CPU burner), with the admin API and dashboard
on and an admin token, prints how to connect a client and how to operate the cluster, reports a
process that exits on its own, and stops every process it started, by pid, on Ctrl-C, SIGTERM or
SIGHUP (its terminal closed).

State lives in one directory (`--dir`, by default `.forehand` in the current directory): the
cluster CA, the token key file and the admin token are kept between runs, so a client keeps
trusting the same `certs/ca.pem`; node certificates are issued afresh and the shard map starts
empty on every run (servers keep parts in memory, so a map left by an earlier run would name
parts no server holds). Each process logs to `<name>.log` there, and while the cluster is up
`up.json` says where everything is (for scripts; removed when it stops). A run that finds an
`up.json` whose processes still run (its `forehand up` was killed with SIGKILL, say) refuses to
start rather than delete the store under a running manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

from forehand.core import Durability
from forehand.demo._cluster import ClusterConfig, ClusterStartError, DemoCluster, NodeProcess
from forehand.errors import ConfigError
from forehand.runtime.config import LOG_LEVELS, parse_overrides, resolve_paths

__all__ = ["SERVERS_MAX", "UpOptions", "run_up"]

SERVERS_MAX = 32
"""Most servers `forehand up` starts."""
TRANSPORTS = ("tls", "quic")
"""The client-facing transports a cluster can speak."""
STATE_FILE = "up.json"
"""Where everything is, in the state directory, while the cluster is up."""
LOCK_FILE = "up.lock"
"""Held locked by the running `forehand up`, in the state directory."""
TOKEN_FILE = "admin-token"
"""The admin API token, in the state directory (made once, then kept)."""
POLL_INTERVAL_S = 0.2
"""How often the processes are checked."""
STORE_FILES = ("manager.sqlite", "manager.sqlite-wal", "manager.sqlite-shm")
"""The manager's store, removed before every run."""
MANAGER_KEYS_OWNED = frozenset(
    {
        "node_id",
        "listen",
        "transport",
        "certs_dir",
        "store",
        "store_path",
        "ready_file",
        "log_level",
        "admin_http_port",
        "admin_token_file",
    }
)
"""Keys of the manager's configuration `forehand up` sets itself (its own options set some)."""
SERVER_KEYS_OWNED = frozenset(
    {
        "server_id",
        "certs_dir",
        "app",
        "app_dir",
        "listen",
        "manager",
        "manager_id",
        "transport",
        "ready_file",
        "log_level",
    }
)
"""Keys of a server's configuration `forehand up` sets itself."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What stops the cluster: Ctrl-C, a plain `kill`, and the terminal closing (unless SIGHUP is
ignored, as `nohup` leaves it: then the cluster outlives the terminal, as asked)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpOptions:
    """What `forehand up` starts."""

    app: str
    """The application, `module:attribute`."""
    app_dir: Path
    """Directory the application module is imported from."""
    servers: int = 3
    """How many servers (named s1, s2, ...)."""
    directory: Path = Path(".forehand")
    """The state directory."""
    port: int = 7000
    """The manager's port on 127.0.0.1 (0: the system picks)."""
    dashboard_port: int = 7080
    """The admin API's and dashboard's port on 127.0.0.1 (0: the system picks, -1: off)."""
    transport: str = "tls"
    """The client-facing transport."""
    log_level: str = "info"
    """Level of the processes' logs."""
    manager_settings: tuple[str, ...] = ()
    """`key=value` settings of the manager's configuration (dotted keys reach tables), as
    `forehand manager --set` takes them."""
    server_settings: tuple[str, ...] = ()
    """The same for every server (`forehand server --set`)."""

    def __post_init__(self) -> None:
        if not 1 <= self.servers <= SERVERS_MAX:
            raise ConfigError(f"--servers must be 1 to {SERVERS_MAX}, got {self.servers}")
        if not 0 <= self.port <= 65_535:
            raise ConfigError(f"--port must be 0 to 65535, got {self.port}")
        if not -1 <= self.dashboard_port <= 65_535:
            raise ConfigError(f"--dashboard-port must be -1 to 65535, got {self.dashboard_port}")
        if self.dashboard_port != 0 and self.dashboard_port == self.port:
            raise ConfigError(f"--port and --dashboard-port are both {self.port}")
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"--transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"--dir {self.directory} exists and is not a directory")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        self.settings()

    def settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The manager's and the servers' settings as nested dicts, paths made absolute from
        the current directory; ConfigError, naming the option, for a malformed one or a key
        `up` sets itself. A value the process would refuse is found when the cluster writes
        that process's configuration file and loads it, before starting the process."""
        manager = _settings("--manager-set", self.manager_settings, MANAGER_KEYS_OWNED)
        server = _settings("--server-set", self.server_settings, SERVER_KEYS_OWNED)
        port = server.get("metrics_port")
        if self.servers > 1 and isinstance(port, int) and port > 0:
            raise ConfigError(
                f"--server-set metrics_port={port} gives every server the same port; use "
                "metrics_port=0 (each server its own, listed when the cluster is up)"
            )
        return manager, server

    @property
    def server_ids(self) -> tuple[str, ...]:
        """s1 to s<servers>."""
        return tuple(f"s{number}" for number in range(1, self.servers + 1))


def _settings(option: str, settings: tuple[str, ...], owned: frozenset[str]) -> dict[str, Any]:
    try:
        parsed = parse_overrides(list(settings))
    except ConfigError as error:
        raise ConfigError(f"{option}: {error}") from error
    taken = sorted(owned & set(parsed))
    if taken:
        raise ConfigError(f"{option} may not set {', '.join(taken)}: forehand up sets it")
    resolve_paths(parsed, Path.cwd())
    for table in (parsed, *(value for value in parsed.values() if isinstance(value, dict))):
        for key, value in table.items():
            if isinstance(value, dict) and table is not parsed:
                raise ConfigError(f"{option}: {key} is nested too deep (one table level)")
            if not isinstance(value, dict) and not isinstance(value, bool | int | float | str):
                raise ConfigError(f"{option}: {key} must be a number, a string or a boolean")
    return parsed


def run_up(options: UpOptions, *, out: TextIO = sys.stdout) -> int:
    """Check the app, start the cluster, print how to use it and keep it up until Ctrl-C or
    SIGTERM; the exit status (0 once stopped on request, 1 if it could not start or the manager
    died). ConfigError for an app that cannot be loaded, before any process starts, and for a
    state directory that cannot be made or written."""
    from forehand.runtime.process import load_app

    app = load_app(options.app, options.app_dir)
    directory = options.directory.resolve()
    with contextlib.ExitStack() as stack:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_lock(directory / LOCK_FILE))
            _refuse_running_leftovers(directory)
            for name in STORE_FILES:
                (directory / name).unlink(missing_ok=True)
            token_file = _admin_token(directory / TOKEN_FILE)
        except OSError as error:
            raise _unusable(directory, error) from error
        replicated = [
            name
            for name, spec in app.part_specs().items()
            if spec.durability is Durability.REPLICATED
        ]
        if options.servers == 1 and replicated:
            print(
                f"forehand up: warning: with one server the replicated part(s) "
                f"{', '.join(replicated)} have no replica to acknowledge a write, so their "
                "writes time out; use --servers 2 or more",
                file=out,
                flush=True,
            )
        return _run_locked(options, directory, token_file, out)


def _unusable(directory: Path, error: OSError) -> ConfigError:
    """The one line for a state directory that cannot be made or written (not a directory,
    permission denied, a read-only file system): the path and the system's reason."""
    return ConfigError(f"cannot use --dir {directory}: {_reason(error, directory)}")


def _path_of(error: OSError) -> Path | None:
    """The file an OSError names, if it names one."""
    filename = error.filename
    if not isinstance(filename, str | bytes | os.PathLike):
        return None
    return Path(os.fsdecode(filename))


def _reason(error: OSError, directory: Path | None = None) -> str:
    """The system's reason, with the file it concerns unless that is `directory`."""
    path = _path_of(error)
    where = f" ({path})" if path is not None and path != directory else ""
    return f"{error.strerror or error}{where}"


_DIRECTORY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
"""Errors of no file that writing the directory's files raises (a full disk, a quota, a
read-only file system, an I/O error); any other (a process or thread refused, no descriptor
left) is not the directory's."""


def _directorys(error: OSError, directory: Path) -> bool:
    """Whether `error`, raised while the cluster started, is the directory's: its file is the
    directory or lies under it, or it names no file and is one that writing raises (a write
    that found the disk full names none)."""
    if error.filename is None:
        return error.errno in _DIRECTORY_ERRNOS
    path = _path_of(error)
    return path is not None and (path == directory or directory in path.parents)


def _refuse_running_leftovers(directory: Path) -> None:
    """ConfigError if `up.json` names processes that still run: an earlier `forehand up` that
    could not stop them (SIGKILL) left them serving from this directory's store."""
    try:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        pids = {str(name): int(pid) for name, pid in state["pids"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    running = sorted(f"{name} (pid {pid})" for name, pid in pids.items() if _is_forehand(pid))
    if running:
        raise ConfigError(
            f"processes of an earlier forehand up in --dir {directory} still run: "
            f"{', '.join(running)}; stop them (kill PID) or pick another --dir"
        )


def _is_forehand(pid: int) -> bool:
    """Whether `pid` runs forehand, as far as /proc says (a pid reused by another program is
    not ours); without /proc, whether it runs at all."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return any(
        argument == b"forehand"
        or argument.endswith(b"/forehand")
        or argument.startswith(b"forehand.")
        or b"from forehand.cli import" in argument
        for argument in command.split(b"\0")
    )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made if missing): two `forehand up` in one directory
    would delete each other's store. ConfigError when another process holds it."""
    with path.open("a", encoding="utf-8") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise ConfigError(
                f"another forehand up is running with --dir {path.parent}; stop it or pick "
                "another --dir"
            ) from error
        yield


def _run_locked(options: UpOptions, directory: Path, token_file: Path, out: TextIO) -> int:
    from forehand.runtime.loop import run

    manager_settings, server_settings = options.settings()
    config = ClusterConfig(
        server_ids=options.server_ids,
        app=options.app,
        app_dir=options.app_dir.resolve(),
        transport=options.transport,
        burner=None,
        manager_listen=f"127.0.0.1:{options.port}",
        admin_http_port=options.dashboard_port,
        admin_token_file=token_file,
        manager_settings=manager_settings,
        server_settings=server_settings,
        load_report_interval_ms=500,
        log_level=options.log_level,
    )
    return run(_up(DemoCluster(directory, config), options, out))


def _admin_token(path: Path) -> Path:
    """The token file at `path`, made (readable by its owner only) if missing."""
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(secrets.token_hex(16) + "\n")
    return path


async def _up(cluster: DemoCluster, options: UpOptions, out: TextIO) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Only SIGHUP keeps an ignored disposition (nohup's); a shell starts a background job with
    # SIGINT ignored, and `kill -INT` must still stop it.
    handled = [
        n
        for n in STOP_SIGNALS
        if n is not signal.SIGHUP or signal.getsignal(n) is not signal.SIG_IGN
    ]
    for number in handled:
        loop.add_signal_handler(number, stop.set)
    state_path = cluster.directory / STATE_FILE
    try:
        starting = asyncio.ensure_future(cluster.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClusterStartError):
                await starting
            print("forehand up: interrupted while starting; every process was stopped", file=out)
            return 0
        stopping.cancel()
        try:
            starting.result()
        except ClusterStartError as error:
            print(f"forehand up: the cluster did not start: {error}", file=out)
            return 1
        except OSError as error:
            # Certificates, configuration files and logs go into the directory as it starts;
            # an error elsewhere (a process that cannot be spawned) is not the directory's.
            if _directorys(error, cluster.directory):
                raise _unusable(cluster.directory, error) from error
            raise ConfigError(f"could not start the cluster: {_reason(error)}") from error
        state = _state(cluster, options)
        state_path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        print(_banner(cluster, options, state), file=out, flush=True)
        return await _supervise(cluster, stop, out)
    finally:
        for number in handled:
            loop.remove_signal_handler(number)
        cluster.stop()
        state_path.unlink(missing_ok=True)


def _state(cluster: DemoCluster, options: UpOptions) -> dict[str, object]:
    processes = {process.name: process for process in cluster.processes()}
    dashboard = cluster.dashboard_url
    return {
        "manager": cluster.manager_address,
        "transport": options.transport,
        "ca": str(cluster.ca_path),
        "certs_dir": str(cluster.certs_dir),
        "admin_url": dashboard.rstrip("/") if dashboard else None,
        "admin_token_file": str(cluster.directory / TOKEN_FILE),
        "servers": {name: cluster.servers[name].address for name in cluster.servers},
        "metrics": cluster.metrics_urls,
        "pids": {name: process.pid for name, process in processes.items()},
        "logs": {name: str(process.log_path) for name, process in processes.items()},
    }


def _banner(cluster: DemoCluster, options: UpOptions, state: dict[str, object]) -> str:
    manager = cluster.manager_address
    ca = cluster.ca_path
    servers = ", ".join(
        f"{process.name} {process.address} (pid {process.pid})"
        for process in cluster.servers.values()
    )
    assert cluster.manager is not None
    connect = f'forehand.connect("{manager}", ca="{ca}"'
    if options.transport != "tls":
        connect += f', transport="{options.transport}"'
    lines = [
        f"Forehand is up: a manager and {options.servers} server(s) of {options.app} "
        f"on 127.0.0.1 ({options.transport.upper()}).",
        f"  manager    {manager} (pid {cluster.manager.pid})",
        f"  servers    {servers}",
        f"  CA         {ca}",
        f"  logs       {cluster.directory}/<name>.log",
        f"  state      {cluster.directory / STATE_FILE}",
    ]
    admin_url = state["admin_url"]
    if admin_url:
        lines.append(f"  dashboard  {admin_url}/")
    metrics = cast(dict[str, str], state["metrics"])
    if metrics:
        lines.append("  metrics    " + ", ".join(f"{name} {url}" for name, url in metrics.items()))
    lines += ["Connect a client:", f"  async with {connect}) as client: ..."]
    if admin_url:
        token = cluster.directory / TOKEN_FILE
        lines += [
            "Operate it from another shell:",
            f'  export FOREHAND_ADMIN_URL={admin_url} FOREHAND_ADMIN_TOKEN="$(cat {token})"',
            "  forehand status; forehand sessions; forehand drain s1; forehand undrain s1",
        ]
    lines.append("Ctrl-C stops every process.")
    return "\n".join(lines)


async def _supervise(cluster: DemoCluster, stop: asyncio.Event, out: TextIO) -> int:
    """Until `stop`: report each server that exits (the others keep running); 1 if the manager
    exits, 0 once stopped on request."""
    reported: set[str] = set()
    while not stop.is_set():
        for process in cluster.processes():
            if process.alive or process.name in reported:
                continue
            reported.add(process.name)
            print(_exited(process), file=out, flush=True)
            if process is cluster.manager:
                return 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_INTERVAL_S)
    print("forehand up: stopping every process", file=out, flush=True)
    return 0


def _exited(process: NodeProcess) -> str:
    code = process.popen.returncode
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited ({code})"
    role = "the manager" if process.name == "manager" else f"server {process.name}"
    tail = "\n".join(f"    {line}" for line in process.log_tail(5).splitlines())
    keep = "stopping the rest" if process.name == "manager" else "the others keep running"
    if code is not None and code < 0:
        # A signal ends a process from outside: its last lines are what it did before, maybe
        # long before, not the cause (an application error it answered reads like one).
        return (
            f"forehand up: {role} {how} (from outside; its log says nothing of it); {keep}. "
            f"Its last lines before, in {process.log_path}:\n{tail}"
        )
    return f"forehand up: {role} {how}; {keep}. The end of {process.log_path}:\n{tail}"
