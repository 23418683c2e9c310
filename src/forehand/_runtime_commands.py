"""The runtime's subcommands of `forehand`: `certs`, `manager`, `server` and `admin`.

`forehand.cli` registers them with `register(app)`. Heavy imports happen inside the commands (and
this module sits outside `forehand.runtime`, whose package imports every transport), so that
`forehand --help` stays fast. Invalid configuration prints one line and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from forehand.runtime.keys import ClusterKeys

__all__ = ["register"]

CONFIG_ERROR_EXIT = 2
"""Exit status of a process whose configuration is invalid."""
SESSION_HEX_DIGITS = 32
"""A session id (16 bytes) as operators write it."""
_FLAG_KEYS = {"manager_address": "manager", "config": "", "settings": ""}
"""The configuration key of each command parameter whose name differs from it ("": none)."""


def _keys_of(kind: Any, *, skip: tuple[str, ...] = ()) -> str:
    names = [item.name for item in dataclasses.fields(kind) if item.name not in skip]
    return ", ".join(names)


def _unflagged_keys(kind: Any, command: Callable[..., None], tables: Iterable[str]) -> str:
    """The top-level keys of `kind` that `command` has no flag for (only --set or the file)."""
    flags = {_FLAG_KEYS.get(name, name) for name in inspect.signature(command).parameters}
    return _keys_of(kind, skip=(*flags, *tables))


def _tables_help(
    tables: dict[str, tuple[str, Any, tuple[str, ...]]], *, unflagged: str = ""
) -> str:
    lines = [
        "Each option may also be set in the TOML file (--config) under its name with underscores; "
        "flags override the file, and --set sets any key, tables included (a key given both "
        "by its flag and by --set is refused) "
        "(--set core.failure_timeout_ms=1000). Units are in the key names: _ms milliseconds, "
        "_us microseconds, _bytes bytes, _max a count."
    ]
    if unflagged:
        lines.append(f"Top-level keys without a flag: {unflagged}.")
    lines.append("Tables:")
    for table, (owner, kind, skip) in tables.items():
        lines.append(f"{table} table ({owner}): {_keys_of(kind, skip=skip)}.")
    return "\n\n".join(lines)


def _overrides(values: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    from forehand.errors import ConfigError
    from forehand.runtime.config import parse_overrides

    merged = parse_overrides(settings)
    for key, value in values.items():
        if value is None:
            continue
        if key in merged:
            # Which one should win is a guess either way: refuse, naming both.
            raise ConfigError(
                f"{key} is given twice, by --{key.replace('_', '-')} and by --set {key}=; "
                "give it once"
            )
        merged[key] = str(value) if isinstance(value, Path) else value
    return merged


def _fail(command: str, error: Exception) -> typer.Exit:
    typer.echo(f"forehand {command}: {error}", err=True)
    return typer.Exit(CONFIG_ERROR_EXIT)


def _run(command: str, load: Callable[[], Any], start: Callable[[Any], Any]) -> None:
    from forehand.errors import ConfigError
    from forehand.runtime.loop import run
    from forehand.runtime.process import configure_logging

    try:
        config = load()
        configure_logging(config.log_level, config.log_format)
        run(start(config))
    except ConfigError as error:
        raise _fail(command, error) from error
    except KeyboardInterrupt:
        return


def _manager_epilog() -> str:
    from forehand.core import ManagerConfig
    from forehand.placement import PlacementConfig
    from forehand.runtime.config import ManagerProcessConfig
    from forehand.runtime.node import DriverConfig
    from forehand.runtime.transport import ConnectionLimits

    tables = {
        "core": ("forehand.core.ManagerConfig", ManagerConfig, ("node_id",)),
        "placement": ("forehand.placement.PlacementConfig", PlacementConfig, ()),
        "driver": ("forehand.runtime.node.DriverConfig", DriverConfig, ()),
        "limits": ("client connections' ConnectionLimits", ConnectionLimits, ("wire",)),
    }
    return _tables_help(tables, unflagged=_unflagged_keys(ManagerProcessConfig, manager, tables))


def _server_epilog() -> str:
    from forehand.core import ServerConfig
    from forehand.runtime.config import SERVER_IDENTITY_FIELDS, ServerProcessConfig
    from forehand.runtime.node import DriverConfig
    from forehand.runtime.transport import ConnectionLimits

    tables = {
        "core": ("forehand.core.ServerConfig", ServerConfig, SERVER_IDENTITY_FIELDS),
        "driver": ("forehand.runtime.node.DriverConfig", DriverConfig, ()),
        "limits": ("client connections' ConnectionLimits", ConnectionLimits, ("wire",)),
    }
    return _tables_help(tables, unflagged=_unflagged_keys(ServerProcessConfig, server, tables))


_CONFIG = typer.Option(None, "--config", help="TOML file of the process (see below).")
_SET = typer.Option([], "--set", help="KEY=VALUE override of any key, dotted for tables.")
_LISTEN = typer.Option(
    None, help="host:port for clients and cluster peers; port 0 picks one [127.0.0.1:7000]."
)
_SERVER_LISTEN = typer.Option(
    None, help="host:port for clients and cluster peers; port 0 picks one [127.0.0.1:7100]."
)
_TRANSPORT = typer.Option(
    None, help="Client-facing transport: tls (TCP) or quic (UDP, same port) \\[tls]."
)
_CERTS = typer.Option(None, help="Directory made by `forehand certs` (ca.pem, node keys).")
_KEYS = typer.Option(None, help="Cluster token key file [CERTS_DIR/cluster-keys.toml].")
_READY = typer.Option(None, help="File the process writes host:port to once it listens.")
_LOG = typer.Option(None, help="Log level on stderr: debug, info, warning, error \\[info].")
_LOG_FORMAT = typer.Option(None, help="Log lines on stderr: console or json \\[console].")


_STORE_PATH = typer.Option(None, help="SQLite file \\[manager.sqlite].")
_APP_DIR = typer.Option(None, help="Directory the app module is imported from [.].")
_DIRECTORY = typer.Argument(..., help="Where to write the files (created if missing).")
_NODES = typer.Argument(None, help="Node ids to issue certificates for.")


def manager(
    *,
    config: Path | None = _CONFIG,
    listen: str | None = _LISTEN,
    transport: str | None = _TRANSPORT,
    certs_dir: Path | None = _CERTS,
    keys_file: Path | None = _KEYS,
    node_id: str | None = typer.Option(None, help="The manager's node id \\[manager]."),
    store: str | None = typer.Option(
        None,
        help=(
            "Shard-map store: sqlite, memory, or etcd://HOST:PORT[,HOST:PORT...] for managers"
            " that elect a leader (docs/DEPLOYMENT.md) \\[sqlite]."
        ),
    ),
    store_path: Path | None = _STORE_PATH,
    ready_file: Path | None = _READY,
    log_level: str | None = _LOG,
    log_format: str | None = _LOG_FORMAT,
    settings: list[str] = _SET,
) -> None:
    """Run the Session Manager: membership, the shard map, handoffs and failover."""
    values = {
        "listen": listen,
        "transport": transport,
        "certs_dir": certs_dir,
        "keys_file": keys_file,
        "node_id": node_id,
        "store": store,
        "store_path": store_path,
        "ready_file": ready_file,
        "log_level": log_level,
        "log_format": log_format,
    }

    def load() -> Any:
        from forehand.runtime.config import load_manager_config

        return load_manager_config(config, _overrides(values, settings))

    def start(loaded: Any) -> Any:
        from forehand.runtime.process import run_manager

        return run_manager(loaded)

    _run("manager", load, start)


def server(
    *,
    config: Path | None = _CONFIG,
    app: str | None = typer.Option(
        None, help="The application, module:attribute (a forehand.App)."
    ),
    app_dir: Path | None = _APP_DIR,
    server_id: str | None = typer.Option(None, help="This server's node id (its certificate's)."),
    listen: str | None = _SERVER_LISTEN,
    advertise: str | None = typer.Option(
        None,
        help="host:port announced to clients \\[listen]; needed when listening on a wildcard"
        " address, and itself neither a wildcard nor port 0.",
    ),
    manager_address: str | None = typer.Option(
        None,
        "--manager",
        help="host:port of the manager, or several separated by commas (managers on etcd)"
        " [127.0.0.1:7000].",
    ),
    manager_id: str | None = typer.Option(None, help="The manager's node id \\[manager]."),
    transport: str | None = _TRANSPORT,
    certs_dir: Path | None = _CERTS,
    keys_file: Path | None = _KEYS,
    zone: str | None = typer.Option(None, help="Failure domain label \\[default]."),
    weight: float | None = typer.Option(None, help="Relative capacity, 0.001 to 100 [1.0]."),
    incarnation: int | None = typer.Option(
        None, help="Restart counter; 0 uses the start time in milliseconds [0]."
    ),
    load_report_interval_ms: int | None = typer.Option(
        None, help="Load sampling period for heartbeats, milliseconds [500]."
    ),
    leave_timeout_ms: int | None = typer.Option(
        None,
        help="On SIGTERM, hand every part to the other servers first and stop once done, or"
        " after this long, milliseconds; 0 stops at once, as SIGINT does [30000].",
    ),
    ready_file: Path | None = _READY,
    log_level: str | None = _LOG,
    log_format: str | None = _LOG_FORMAT,
    settings: list[str] = _SET,
) -> None:
    """Run one server hosting the application's parts as primary or replica."""
    values = {
        "app": app,
        "app_dir": app_dir,
        "server_id": server_id,
        "listen": listen,
        "advertise": advertise,
        "manager": manager_address,
        "manager_id": manager_id,
        "transport": transport,
        "certs_dir": certs_dir,
        "keys_file": keys_file,
        "zone": zone,
        "weight": weight,
        "incarnation": incarnation,
        "load_report_interval_ms": load_report_interval_ms,
        "leave_timeout_ms": leave_timeout_ms,
        "ready_file": ready_file,
        "log_level": log_level,
        "log_format": log_format,
    }

    def load() -> Any:
        from forehand.runtime.config import load_server_config, server_warnings

        loaded = load_server_config(config, _overrides(values, settings))
        for warning in server_warnings(loaded):
            typer.echo(f"forehand server: warning: {warning}", err=True)
        return loaded

    def start(loaded: Any) -> Any:
        from forehand.runtime.process import run_server

        async def serve() -> None:
            # Imported on the running loop, where the server would import it.
            _import_app(loaded.app, loaded.app_dir)
            await run_server(loaded)

        return serve()

    _run("server", load, start)


def _import_app(reference: str, app_dir: Path | None) -> None:
    """Import the application before the server starts, so that a module that cannot be loaded
    (missing, raising on import, without the attribute, not an App) is one line (a ConfigError
    from `load_app`) rather than a traceback through the runtime."""
    from forehand.runtime.process import load_app

    load_app(reference, app_dir)


def _check_key_steps(
    keys_path: Path,
    existing: ClusterKeys | None,
    *,
    add_key: bool,
    current_key: int | None,
    retire_key: int | None,
) -> None:
    """Refuse a rotation step the key file cannot take (ConfigError), before anything is
    written: a sealing key it will not hold, retiring with another step, or a key it does not
    hold or that seals."""
    from forehand.errors import ConfigError

    ids = set() if existing is None else set(existing.keys)
    if current_key is not None:
        # The key a new file starts with, or the one --add-key adds, may be named too.
        coming = max(ids) + 1 if ids and add_key else (1 if not ids else None)
        if current_key not in ids and current_key != coming:
            held = ", ".join(map(str, sorted(ids))) or "none yet"
            raise ConfigError(
                f"cluster key id {current_key} is not in {keys_path} (ids: {held}"
                + (f"; --add-key adds {coming}" if coming is not None else "")
                + ")"
            )
    if retire_key is not None and (add_key or current_key is not None):
        raise ConfigError(
            "--retire-key runs alone: the old key may go only once every node seals with "
            "the new one and what the old one sealed has expired (credential_lifetime_ms)"
        )
    if retire_key is not None:
        sealing = current_key
        if sealing is None and existing is not None:
            sealing = existing.current_key_id
        if retire_key not in ids:
            held = ", ".join(map(str, sorted(ids))) or "none yet"
            raise ConfigError(f"cluster key id {retire_key} is not in {keys_path} (ids: {held})")
        if retire_key == sealing:
            raise ConfigError(
                f"cluster key {retire_key} seals: make another key current (--current-key) "
                "before retiring it"
            )


def certs(
    directory: Path = _DIRECTORY,
    nodes: list[str] = _NODES,
    *,
    days: int = typer.Option(365, help="Validity of new certificates, days (1 to 3650)."),
    admin: bool = typer.Option(
        True, help="Also issue the operator's `admin` certificate if the directory has none."
    ),
    add_key: bool = typer.Option(
        False,
        help="Rotation step 1: add a new cluster token key (it opens, it does not seal yet); "
        "copy the file to every node and restart each.",
    ),
    current_key: int | None = typer.Option(
        None,
        help="Rotation step 2, once every node holds the key: make this key id the sealing key; "
        "copy the file to every node and restart each.",
    ),
    retire_key: int | None = typer.Option(
        None,
        help="Rotation step 3, once what the old key sealed has expired (credential_lifetime_ms, "
        "24 h by default, after step 2): remove this key id; copy the file to every node and "
        "restart each. Not with --add-key or --current-key: each step needs every node "
        "restarted before the next.",
    ),
) -> None:
    """Make the cluster CA, node certificates and the cluster token key file, and rotate the
    token keys (--add-key, then --current-key, then --retire-key; docs/DEPLOYMENT.md)."""
    from forehand.errors import ConfigError
    from forehand.runtime.certs import make_cluster_certs
    from forehand.runtime.keys import (
        CLUSTER_KEYS_FILE,
        add_cluster_key,
        load_cluster_keys,
        retire_cluster_key,
        rotate_cluster_key,
    )

    names = list(nodes or [])
    # The operator's certificate once; named among the nodes, it is issued again (renewed).
    if admin and "admin" not in names and not (directory / "admin.pem").exists():
        names.append("admin")
    keys_path = directory / CLUSTER_KEYS_FILE
    try:
        # Refuse a damaged key file, or a sealing key it will not hold, before writing anything.
        existing = load_cluster_keys(keys_path) if keys_path.exists() else None
        ids = set() if existing is None else set(existing.keys)
        _check_key_steps(
            keys_path,
            existing,
            add_key=add_key,
            current_key=current_key,
            retire_key=retire_key,
        )
        if names:
            written = make_cluster_certs(directory, names, days=days)
            for entry in written.nodes:
                typer.echo(f"{entry.node}: {entry.certificate_path} {entry.key_path}")
        else:
            directory.mkdir(parents=True, exist_ok=True)
        if not keys_path.exists() or add_key:
            fresh = not keys_path.exists()
            key_id = add_cluster_key(keys_path)
            typer.echo(f"cluster key {key_id} added to {keys_path}")
            if not fresh and current_key != key_id:
                typer.echo(
                    f"  it opens but does not seal yet: copy the file to every node, the manager "
                    f"included, restart each, then run `forehand certs {directory} --current-key "
                    f"{key_id}`"
                )
        if current_key is not None:
            rotate_cluster_key(keys_path, current_key)
            typer.echo(f"cluster key {current_key} now seals")
            if existing is not None and current_key not in ids:
                typer.echo(
                    f"  key {current_key} is new and seals at once: on a running cluster, nodes "
                    "not given this file open nothing it seals; there, add the key first "
                    "(--add-key), give it to every node and restart each, then make it current"
                )
            elif existing is not None:
                typer.echo(
                    "  copy the file to every node and restart each; once credential_lifetime_ms "
                    "(24 h by default) has passed, retire the old key with --retire-key"
                )
        if retire_key is not None:
            retire_cluster_key(keys_path, retire_key)
            typer.echo(
                f"cluster key {retire_key} retired from {keys_path}: copy the file to every node "
                "and restart each; what it sealed opens no more"
            )
    except ConfigError as error:
        raise _fail("certs", error) from error
    except OSError as error:
        raise _fail("certs", ConfigError(f"cannot write to {directory}: {error}")) from error


admin_app = typer.Typer(
    name="admin",
    help="Operator commands to the manager, over mutual TLS with an admin certificate.",
    no_args_is_help=True,
)
_MANAGER = typer.Option(
    "127.0.0.1:7000",
    "--manager",
    help="host:port of the manager, or several separated by commas (tried in order).",
)
_ADMIN_CERTS = typer.Option(..., "--certs-dir", help="Directory with ca.pem and admin.pem/.key.")
_ADMIN_NODE = typer.Option("admin", "--node", help="The operator's node id (certificate).")


def _admin(manager_address: str, certs_dir: Path, node: str, request: Any) -> None:
    import asyncio

    from forehand.errors import ConfigError
    from forehand.runtime.admin import AdminError, admin_request

    try:
        reply = asyncio.run(
            admin_request(manager_address, request, certs_dir=certs_dir, node_id=node)
        )
    except ConfigError as error:
        # Local set-up (the operator's certificate, the address): exit 2, as bad settings do.
        typer.echo(f"forehand admin: {error}", err=True)
        raise typer.Exit(2) from error
    except (AdminError, OSError, TimeoutError) as error:
        typer.echo(f"forehand admin: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"ok={reply.ok} map_version={reply.map_version} {reply.detail}".rstrip())
    for status in reply.servers:
        typer.echo(f"{status.server_id} {status.address} {status.member_state} {status.map_state}")
    if not reply.ok:
        raise typer.Exit(1)


@admin_app.command("drain")
def admin_drain(
    server_id: str = typer.Argument(..., help="The server to drain."),
    manager_address: str = _MANAGER,
    certs_dir: Path = _ADMIN_CERTS,
    node: str = _ADMIN_NODE,
) -> None:
    """Move every part off a server with planned handoffs."""
    from forehand.runtime.admin import Drain

    _admin(manager_address, certs_dir, node, Drain(server_id=server_id))


@admin_app.command("undrain")
def admin_undrain(
    server_id: str = typer.Argument(..., help="The server."),
    manager_address: str = _MANAGER,
    certs_dir: Path = _ADMIN_CERTS,
    node: str = _ADMIN_NODE,
) -> None:
    """Make a drained server active again."""
    from forehand.runtime.admin import Undrain

    _admin(manager_address, certs_dir, node, Undrain(server_id=server_id))


@admin_app.command("move")
def admin_move(
    session_id: str = typer.Argument(..., help="The session id, 32 hex digits."),
    target: str | None = typer.Option(
        None, "--to", "--target", help="The target server \\[the manager picks]."
    ),
    manager_address: str = _MANAGER,
    certs_dir: Path = _ADMIN_CERTS,
    node: str = _ADMIN_NODE,
) -> None:
    """Hand one session's parts off (a planned handoff), to `--to` as `forehand handoff` takes
    it (`--node` is the operator's own certificate, not the target)."""
    from forehand.runtime.admin import MoveSession

    digits = "0123456789abcdefABCDEF"
    if len(session_id) != SESSION_HEX_DIGITS or not all(c in digits for c in session_id):
        typer.echo(f"forehand admin: a session id is 32 hex digits, got {session_id!r}", err=True)
        raise typer.Exit(CONFIG_ERROR_EXIT)
    _admin(
        manager_address,
        certs_dir,
        node,
        MoveSession(session_id=bytes.fromhex(session_id), target=target),
    )


@admin_app.command("rebalance")
def admin_rebalance(
    tolerance: float = typer.Option(
        0.1,
        min=0.0,
        max=10.0,
        help="Servers more than this share above theirs give parts, those below take them.",
    ),
    parts_max: int = typer.Option(10_000, min=1, help="Most parts one rebalance queues."),
    manager_address: str = _MANAGER,
    certs_dir: Path = _ADMIN_CERTS,
    node: str = _ADMIN_NODE,
) -> None:
    """Even out the servers' primaries with planned handoffs (reason rebalance), e.g. after a
    server came back from a restart, at once; once they are even, one commit of replica roles
    to the servers below their share of those (the manager does both by itself once the
    cluster settled, `rebalance_interval_ms`)."""
    from forehand.runtime.admin import Rebalance

    _admin(manager_address, certs_dir, node, Rebalance(tolerance=tolerance, parts_max=parts_max))


@admin_app.command("status")
def admin_status(
    manager_address: str = _MANAGER,
    certs_dir: Path = _ADMIN_CERTS,
    node: str = _ADMIN_NODE,
) -> None:
    """Print the map version and the membership."""
    from forehand.runtime.admin import Status

    _admin(manager_address, certs_dir, node, Status())


def register(app: typer.Typer) -> None:
    """Add the runtime's subcommands to the `forehand` command."""
    app.command("certs")(certs)
    app.command("manager", epilog=_lazy_epilog("manager"))(manager)
    app.command("server", epilog=_lazy_epilog("server"))(server)
    app.add_typer(admin_app)


def _lazy_epilog(command: str) -> str:
    # The epilog lists the keys of the core configurations; building it imports the cores, so
    # it is only built when help is asked for.
    import sys

    if "--help" not in sys.argv:
        return ""
    return _manager_epilog() if command == "manager" else _server_epilog()
