"""Configuration of the `forehand manager` and `forehand server` processes: TOML plus overrides.

A process reads one TOML file whose top-level keys are the fields of `ManagerProcessConfig` or
`ServerProcessConfig`, with optional tables for the cores and the driver:

    # manager.toml
    listen = "127.0.0.1:7000"
    certs_dir = "certs"            # relative paths are relative to this file
    store_path = "manager.sqlite"

    [core]                         # any field of forehand.core.ManagerConfig
    failure_timeout_ms = 3000

    [placement]                    # any field of forehand.placement.PlacementConfig
    replica_count = 2

    [driver]                       # any field of forehand.runtime.node.DriverConfig
    dial_backoff_ms = 100

    [limits]                       # ConnectionLimits of the client-facing listener, but `wire`
    connections_max = 50000

Command-line flags override the file, and `--set key=value` (`core.failure_timeout_ms=1000`)
overrides any key, the value read as a TOML value. Every value is checked on load: an unknown
key, a value of the wrong type or out of range, NaN or infinity, an integer beyond 64 bits, a
table given as a plain value raises `ConfigError` naming the key, and the CLI exits with code 2.
Files are checked too: the file itself must be UTF-8 TOML, `ready_file` must have a directory to
go in, the etcd TLS files must exist, and the node's certificate and key (when present; a missing
one is reported once the process starts) must be PEM, belong together, be issued by `ca.pem` and
not have expired, so that a TLS error never stands in for a configuration mistake.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from forehand.core import ManagerConfig, ServerConfig
from forehand.core._server_config import CREDENTIAL_LIFETIME_MIN_MS
from forehand.errors import ConfigError
from forehand.placement import PlacementConfig
from forehand.runtime.certs import check_node_credentials, check_tls_files, validate_node_name
from forehand.runtime.keys import CLUSTER_KEYS_FILE
from forehand.runtime.node import DriverConfig
from forehand.runtime.transport import ConnectionLimits
from forehand.wire import DEFAULT_CONFIG

__all__ = [
    "SERVER_IDENTITY_FIELDS",
    "TRANSPORTS",
    "ManagerProcessConfig",
    "ServerProcessConfig",
    "load_manager_config",
    "load_server_config",
    "parse_address",
    "parse_addresses",
    "parse_overrides",
    "resolve_paths",
    "server_warnings",
]

TRANSPORTS = ("tls", "quic")
"""Client-facing transports; cluster links are always mutual TLS over TCP."""
STORES = ("sqlite", "memory")
"""Shard-map stores the manager can use."""
LOG_LEVELS = ("debug", "info", "warning", "error")
"""Levels of the process log."""
LOG_FORMATS = ("console", "json")
"""Renderings of the process log: readable lines or one JSON object per line."""
SERVER_IDENTITY_FIELDS = (
    "server_id",
    "incarnation",
    "address",
    "zone",
    "weight",
    "manager_id",
    "transport",
)
"""ServerConfig fields the process sets itself from its top-level keys; not allowed in [core]."""
WEIGHT_MIN = 0.001
"""Smallest relative capacity of a server (any manager's placement refuses less)."""
LEAVE_TIMEOUT_MS_MAX = 3_600_000
"""Longest `leave_timeout_ms` (an hour): a drain that takes longer is not a planned stop."""
INTEGER_MAX = (1 << 63) - 1
"""Largest integer a configuration value may hold: counts and durations travel as signed 64-bit
integers (msgpack, the store, numpy), so a larger one would fail far from the file that set it."""

ADMIN_HTTP_BOUNDS = {
    "admin_http_connections_max": (1, 100_000),
    "admin_http_request_timeout_ms": (1, 3_600_000),
    "admin_http_idle_timeout_ms": (1, 3_600_000),
    "admin_http_write_buffer_bytes": (1_024, 64 * 1024 * 1024),
    "admin_http_write_stall_timeout_ms": (1, 3_600_000),
}
"""Ranges of the admin API's connection bounds (`forehand.ops.HTTPLimits`)."""

C = TypeVar("C")


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "*"})
"""Hosts that name every local address: a listener's, never one to dial."""


def parse_address(text: str, *, where: str, dialable: bool = False) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) as a (host, port) pair; port 0 lets the system choose a
    listener's port. A `dialable` address (one others connect to: an advertised address, a
    manager endpoint) needs a real port and a host that is not a wildcard."""
    if "/" in text:
        # `https://host:port` read as the host `https://host`: dialed, it failed 7 s later in
        # name resolution.
        raise ConfigError(f"{where} must be host:port, without a scheme or path, got {text!r}")
    host, separator, port_text = text.rpartition(":")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise ConfigError(f"{where} must be host:port (IPv6 in brackets), got {text!r}")
        host = host[1:-1]
    if not separator or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ConfigError(f"{where} must be host:port, got {text!r}")
    if "," in host:
        raise ConfigError(f"{where} must be one host:port, got {text!r} (several, in a list)")
    if dialable and (int(port_text) == 0 or host in WILDCARD_HOSTS):
        raise ConfigError(
            f"{where} must be an address others can connect to, got {text!r} (a wildcard host "
            "or port 0 only makes sense for a listener)"
        )
    return host, int(port_text)


def parse_addresses(text: str, *, where: str, dialable: bool = False) -> list[tuple[str, int]]:
    """Comma-separated `host:port` addresses, each as `parse_address` reads it."""
    addresses = [
        parse_address(part.strip(), where=where, dialable=dialable) for part in text.split(",")
    ]
    if not addresses:
        raise ConfigError(f"{where} needs at least one host:port")
    return addresses


def _check_common(config: Any, where: str) -> None:
    if config.transport not in TRANSPORTS:
        raise ConfigError(f"{where}transport must be one of {TRANSPORTS}, got {config.transport!r}")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"{where}log_level must be one of {LOG_LEVELS}, got {config.log_level!r}")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"{where}log_format must be one of {LOG_FORMATS}, got {config.log_format!r}"
        )
    parse_address(config.listen, where=f"{where}listen")
    if not config.certs_dir.is_dir():
        raise ConfigError(
            f"{where}certs_dir {config.certs_dir} does not exist (make it with forehand certs)"
        )
    if not (config.certs_dir / "ca.pem").is_file():
        raise ConfigError(f"{where}certs_dir {config.certs_dir} holds no ca.pem")
    _check_parent(config.ready_file, f"{where}ready_file")
    core = config.core
    if core is not None and core.credential_lifetime_ms < CREDENTIAL_LIFETIME_MIN_MS:
        raise ConfigError(
            f"{where}core.credential_lifetime_ms must be at least {CREDENTIAL_LIFETIME_MIN_MS}, "
            f"got {core.credential_lifetime_ms}: clients renew at half the lifetime, at most "
            "once a second"
        )


def _check_parent(path: Path | None, where: str) -> None:
    """A file the process writes later must have a directory to go in, found now."""
    if path is not None and not path.parent.is_dir():
        raise ConfigError(f"{where} {path}: the directory {path.parent} does not exist")


def _check_readable(path: Path | None, where: str) -> None:
    if path is not None and not path.is_file():
        raise ConfigError(f"{where} {path} is not a file")


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerProcessConfig:
    """What `forehand manager` runs with."""

    certs_dir: Path
    """Directory of `forehand certs`: ca.pem, <node_id>.pem and .key, cluster-keys.toml."""
    node_id: str = "manager"
    """The manager's node id; its certificate must name it."""
    listen: str = "127.0.0.1:7000"
    """host:port for clients (TLS/TCP, or QUIC/UDP) and servers (mutual TLS/TCP); port 0 picks."""
    transport: str = "tls"
    """Client-facing transport: `tls` (TLS 1.3 over TCP) or `quic` (QUIC on the same port number,
    UDP); cluster links are mutual TLS over TCP either way."""
    keys_file: Path | None = None
    """The cluster token key file; None means certs_dir/cluster-keys.toml."""
    store: str = "sqlite"
    """Shard-map store: `sqlite` (durable, the default), `memory` (lost on exit), or an etcd
    cluster, `etcd://host:port,host:port[/prefix]`: then the managers that name it elect one
    leader on an etcd lease, and the others stand by (docs/DEPLOYMENT.md)."""
    store_path: Path = Path("manager.sqlite")
    """The SQLite file of the shard map."""
    etcd_ca: Path | None = None
    """CA bundle of the etcd members' certificates; set, the manager talks TLS to etcd."""
    etcd_certificate: Path | None = None
    """Client certificate (PEM) the manager presents to etcd, if the members require one."""
    etcd_private_key: Path | None = None
    """Its private key (PEM)."""
    etcd_value_bytes_max: int = 1_000_000
    """Largest value the manager writes to one etcd key; larger deltas and snapshots go in chunks
    of this size. Keep it below the members' `--max-request-bytes` (1.5 MiB by default)."""
    lease_ttl_s: int = 5
    """etcd store: the leader's lease, seconds. A standby leads at most about this long after
    the leader died; the leader steps down before its lease can expire unrenewed."""
    admin_ids: tuple[str, ...] = ("admin",)
    """Node ids (certificate names) allowed to send operator commands."""
    ready_file: Path | None = None
    """Once listening, the process writes `host:port` here (for scripts and tests)."""
    log_level: str = "info"
    """Level of the process log on stderr: debug, info, warning or error."""
    log_format: str = "console"
    """`console` (readable lines) or `json` (one JSON object per line) on stderr."""
    admin_http_host: str = "127.0.0.1"
    """Where the admin HTTP API and dashboard listen (loopback unless set otherwise)."""
    admin_http_port: int = -1
    """Port of the admin HTTP API and dashboard; -1 turns them off, 0 lets the system pick."""
    admin_http_connections_max: int = 64
    """Admin API connections open at once; beyond, a new one is answered 503 and closed."""
    admin_http_request_timeout_ms: int = 10_000
    """Time an admin API request may take to arrive whole, head and body, from its first byte;
    beyond, it is answered 408 and its connection closed."""
    admin_http_idle_timeout_ms: int = 5_000
    """Time an admin API connection may stay open with no request in progress (after it opened,
    or after a response); beyond, it is closed."""
    admin_http_write_buffer_bytes: int = 65_536
    """Bytes an admin API connection buffers for its client (the kernel's send buffer, then as
    much again in the process) before its response waits for the client to read."""
    admin_http_write_stall_timeout_ms: int = 10_000
    """Time a full write buffer may go without the client taking a byte of it; beyond, the
    connection is dropped and logged (a dashboard event stream whose client stopped reading)."""
    admin_token_file: Path | None = None
    """File whose first line is the admin token that mutating API calls must present; None
    reads $FOREHAND_ADMIN_TOKEN, and without either the API refuses every mutation."""
    audit_log_path: Path | None = None
    """JSON Lines file the handoff audit log appends every record to; None keeps it in memory."""
    core: ManagerConfig = field(default_factory=ManagerConfig)
    """The [core] table: bounds and timeouts of the manager core."""
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    """The [placement] table: consistent hashing and replica count (fixed at bootstrap)."""
    driver: DriverConfig = field(default_factory=DriverConfig)
    """The [driver] table: connection bounds and timeouts."""
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    """The [limits] table: bounds of the connections clients make to this process (how many,
    QUIC handshakes under way, the partial-frame budget, send buffers); `wire` is not set here
    (`core.frame_bytes_max` sets it) and the partial-frame budget holds at least one frame."""

    def __post_init__(self) -> None:
        validate_node_name(self.node_id)
        _check_common(self, "")
        check_node_credentials(self.certs_dir, self.node_id)
        if self.store not in STORES and not self.store.startswith("etcd://"):
            raise ConfigError(f"store must be one of {STORES} or etcd://..., got {self.store!r}")
        if self.store.startswith("etcd://"):
            from forehand.stores._etcd import parse_etcd_url  # Imports the HTTP client.

            parse_etcd_url(
                self.store,
                ca_path=self.etcd_ca,
                certificate_path=self.etcd_certificate,
                private_key_path=self.etcd_private_key,
                value_bytes_max=self.etcd_value_bytes_max,
            )
            for name in ("etcd_ca", "etcd_certificate", "etcd_private_key"):
                _check_readable(getattr(self, name), name)
            check_tls_files(self.etcd_ca, self.etcd_certificate, self.etcd_private_key, what="etcd")
        if not 1 <= self.lease_ttl_s <= 600:
            raise ConfigError(f"lease_ttl_s must be 1 to 600, got {self.lease_ttl_s}")
        if not -1 <= self.admin_http_port < 65536:
            raise ConfigError(
                f"admin_http_port must be -1 (off) to 65535, got {self.admin_http_port}"
            )
        for name, (low, high) in ADMIN_HTTP_BOUNDS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{name} must be {low} to {high}, got {value}")

    @property
    def key_path(self) -> Path:
        """The cluster key file to load."""
        return self.keys_file if self.keys_file is not None else self.certs_dir / CLUSTER_KEYS_FILE


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerProcessConfig:
    """What `forehand server` runs with."""

    server_id: str
    """This server's node id, its name in the shard map; its certificate must name it."""
    certs_dir: Path
    """Directory of `forehand certs`: ca.pem, <server_id>.pem and .key, cluster-keys.toml."""
    app: str
    """The application, `module:attribute` naming a `forehand.App` (the module is imported)."""
    app_dir: Path | None = None
    """Directory put first on the import path for `app`; None means the current directory."""
    listen: str = "127.0.0.1:7100"
    """host:port for clients (TLS/TCP, or QUIC/UDP) and cluster peers (mutual TLS/TCP)."""
    advertise: str = ""
    """host:port announced to the manager and clients; empty means the listen address."""
    manager: str = "127.0.0.1:7000"
    """host:port of the manager (mutual TLS/TCP); several, comma-separated, for managers that
    elect a leader on etcd: the server tries them in turn until the leader answers."""
    manager_id: str = "manager"
    """The manager's node id; its certificate must name it."""
    transport: str = "tls"
    """Client-facing transport: `tls` or `quic` (as for the manager)."""
    keys_file: Path | None = None
    """The cluster token key file; None means certs_dir/cluster-keys.toml."""
    zone: str = "default"
    """Failure domain; replicas are spread over zones."""
    weight: float = 1.0
    """Relative capacity for placement (0.001 to 100)."""
    incarnation: int = 0
    """Restart counter announced to the manager; 0 uses the start time in milliseconds, which
    grows on every restart."""
    load_report_interval_ms: int = 500
    """How often the process samples its own CPU use and request rate for heartbeats, ms."""
    leave_timeout_ms: int = 30_000
    """On SIGTERM the server asks the manager to drain it, keeps serving while its parts are
    handed off, and stops once the drain is done, or after this long (what is left then fails
    over); 0 stops at once. SIGINT always stops at once. Give the process manager's stop
    timeout (systemd's TimeoutStopSec, Kubernetes' terminationGracePeriodSeconds, `docker stop
    -t`) a few seconds more than this."""
    ready_file: Path | None = None
    """Once listening, the process writes `host:port` here (for scripts and tests)."""
    log_level: str = "info"
    """Level of the process log on stderr: debug, info, warning or error."""
    log_format: str = "console"
    """`console` (readable lines) or `json` (one JSON object per line) on stderr."""
    metrics_host: str = "127.0.0.1"
    """Where the server's Prometheus `/metrics` endpoint listens."""
    metrics_port: int = -1
    """Port of `/metrics`; -1 turns it off (and the server keeps no metrics), 0 lets the system
    pick."""
    core: ServerConfig | None = None
    """The [core] table: bounds and timeouts of the server core (not its identity fields)."""
    driver: DriverConfig = field(default_factory=DriverConfig)
    """The [driver] table: connection bounds and timeouts."""
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    """The [limits] table: bounds of the connections clients make to this process (how many,
    QUIC handshakes under way, the partial-frame budget, send buffers); `wire` is not set here
    (`core.frame_bytes_max` sets it) and the partial-frame budget holds at least one frame."""

    def __post_init__(self) -> None:
        validate_node_name(self.server_id)
        validate_node_name(self.manager_id)
        _check_common(self, "")
        check_node_credentials(self.certs_dir, self.server_id)
        parse_addresses(self.manager, where="manager", dialable=True)
        if self.advertise:
            parse_address(self.advertise, where="advertise", dialable=True)
        module, _, attribute = self.app.partition(":")
        if not module or not attribute:
            raise ConfigError(f"app must be module:attribute, got {self.app!r}")
        if self.incarnation < 0 or self.load_report_interval_ms < 1:
            raise ConfigError("incarnation must be >= 0 and load_report_interval_ms >= 1")
        if not 0 <= self.leave_timeout_ms <= LEAVE_TIMEOUT_MS_MAX:
            raise ConfigError(
                f"leave_timeout_ms must be 0 (stop at once) to {LEAVE_TIMEOUT_MS_MAX},"
                f" got {self.leave_timeout_ms}"
            )
        if not -1 <= self.metrics_port < 65536:
            raise ConfigError(f"metrics_port must be -1 (off) to 65535, got {self.metrics_port}")
        # Written so that NaN, which compares false with everything, is refused too.
        if not (self.weight >= WEIGHT_MIN and math.isfinite(self.weight)):
            raise ConfigError(f"weight must be a number >= {WEIGHT_MIN}, got {self.weight}")
        if not self.zone:
            raise ConfigError("zone must not be empty")

    @property
    def key_path(self) -> Path:
        """The cluster key file to load."""
        return self.keys_file if self.keys_file is not None else self.certs_dir / CLUSTER_KEYS_FILE

    def core_config(self, *, address: str, incarnation: int) -> ServerConfig:
        """The `ServerConfig` of the core: the [core] table plus this process's identity."""
        base = self.core if self.core is not None else ServerConfig(server_id=self.server_id)
        return dataclasses.replace(
            base,
            server_id=self.server_id,
            incarnation=incarnation,
            address=address,
            zone=self.zone,
            weight=self.weight,
            manager_id=self.manager_id,
            transport=self.transport,
        )


def server_warnings(config: ServerProcessConfig) -> list[str]:
    """What the manager will likely refuse, judged by the default [placement] bounds: a manager
    may raise them, so these are warnings, but a manager that has not refuses the server's join
    without telling the server."""
    bounds = PlacementConfig()
    warnings = []
    if config.weight > bounds.server_weight_max:
        warnings.append(
            f"weight {config.weight:g} is above {bounds.server_weight_max:g}, which managers "
            "refuse unless their [placement] server_weight_max allows it"
        )
    if len(config.zone) > bounds.zone_length_max:
        warnings.append(
            f"zone is {len(config.zone)} characters, above {bounds.zone_length_max}, which "
            "managers refuse unless their [placement] zone_length_max allows it"
        )
    return warnings


def parse_overrides(settings: list[str]) -> dict[str, Any]:
    """`key=value` strings (dotted keys reach tables) as a nested dict; values read as TOML."""
    result: dict[str, Any] = {}
    for setting in settings:
        key, separator, text = setting.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"--set needs key=value, got {setting!r}")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text  # A bare word is a string.
        table = result
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            table = table.setdefault(parent, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {key}: {parent} is not a table")
        table[leaf] = value
    return result


def _read(path: Path | None) -> tuple[dict[str, Any], Path]:
    if path is None:
        return {}, Path.cwd()
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), path.resolve().parent
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text (TOML): {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from error


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _convert(
    kind: type[C], table: Any, where: str, tables: Mapping[str, type[Any]] | None = None
) -> C:
    """Build the dataclass `kind` from a TOML table, naming the offending key on failure; an
    unknown key that is a key of one of `tables` (the top level's `[core]`, `[limits]`, ...)
    is told by its table (`core.failure_timeout_ms`)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    known = {item.name for item in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - known)
    if unknown:
        guesses = {
            name: close[0]
            for name in unknown
            if (close := difflib.get_close_matches(name, sorted(known), n=1))
        }
        for name in unknown:
            for table_name, other in (tables or {}).items():
                if name in {item.name for item in dataclasses.fields(other)}:
                    guesses[name] = f"{table_name}.{name}"
                    break
        if len(unknown) == 1 and guesses:
            hint = f" (did you mean {guesses[unknown[0]]!r}?)"
        else:
            said = [f"{known_name!r} for {name!r}" for name, known_name in guesses.items()]
            hint = f" (did you mean {', '.join(said)}?)" if said else ""
        raise ConfigError(f"unknown key(s) {unknown} in {where}{hint}; known: {sorted(known)}")
    for key, value in table.items():
        _check_number(value, f"{where}: {key}")
    try:
        return msgspec.convert(table, kind, dec_hook=_decode_path)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{where}: {error}") from error
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error


def _check_number(value: Any, where: str) -> None:
    """TOML reads `nan`, `inf` and integers of any size, which no setting means: refuse them
    here, naming the key, before a range check (NaN passes every comparison) or an encoder
    meets them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value}")
    if isinstance(value, int) and not -INTEGER_MAX - 1 <= value <= INTEGER_MAX:
        raise ConfigError(f"{where} must fit in 64 bits, got {value}")
    if isinstance(value, list):
        for item in value:
            _check_number(item, where)


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, got {value!r}")
    return value


def _decode_path(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(kind)


def _resolve_paths(table: dict[str, Any], base: Path, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = table.get(key)
        if isinstance(value, str) and value:
            table[key] = str((base / value).resolve())


_PATH_KEYS = (
    "certs_dir",
    "keys_file",
    "store_path",
    "ready_file",
    "app_dir",
    "etcd_ca",
    "etcd_certificate",
    "etcd_private_key",
    "admin_token_file",
    "audit_log_path",
)


def resolve_paths(table: dict[str, Any], base: Path) -> None:
    """Make the path-valued top-level keys of a configuration `table` absolute from `base`, in
    place (as `--set` values are, from the current directory)."""
    _resolve_paths(table, base, _PATH_KEYS)


def load_manager_config(
    path: Path | None, overrides: Mapping[str, Any] | None = None
) -> ManagerProcessConfig:
    """The manager's configuration from `path` (may be None) with `overrides` on top.

    Relative paths in the file are relative to the file; those in `overrides` to the current
    directory.
    """
    document, base = _read(path)
    _resolve_paths(document, base, _PATH_KEYS)
    override = dict(overrides or {})
    _resolve_paths(override, Path.cwd(), _PATH_KEYS)
    merged = _merge(document, override)
    where = f"{path}: " if path is not None else ""
    core_table = _table(merged.pop("core", {}), f"{where}[core]")
    for key, top_key in (("node_id", "node_id"), ("client_transport", "transport")):
        if key in core_table:
            raise ConfigError(f"{where}[core] may not set {key}; use the top-level {top_key}")
    node_id = merged.get("node_id", "manager")
    transport = merged.get("transport", "tls")
    core = _convert(
        ManagerConfig,
        {"node_id": node_id, "client_transport": transport, **core_table},
        f"{where}[core]",
    )
    placement = _convert(PlacementConfig, merged.pop("placement", {}), f"{where}[placement]")
    driver = _convert(DriverConfig, merged.pop("driver", {}), f"{where}[driver]")
    limits = _limits(
        merged.pop("limits", {}), f"{where}[limits]", frame_bytes_max=core.frame_bytes_max
    )
    if "certs_dir" not in merged:
        hint = _misspelt(merged, "certs_dir", ManagerProcessConfig)
        raise ConfigError(
            f"{where}certs_dir is required (a directory made by `forehand certs`){hint}"
        )
    top = _convert(
        ManagerProcessConfig,
        merged,
        f"{where}top level",
        {
            "core": ManagerConfig,
            "placement": PlacementConfig,
            "driver": DriverConfig,
            "limits": ConnectionLimits,
        },
    )
    return dataclasses.replace(top, core=core, placement=placement, driver=driver, limits=limits)


def _misspelt(table: Mapping[str, Any], key: str, kind: type) -> str:
    """A hint for a required `key` missing from `table`: the unknown key of `table` (not a
    field of `kind`) that looks like it, if any, or ""."""
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(name for name in table if name not in known)
    close = difflib.get_close_matches(key, unknown, n=1)
    return f" ({close[0]!r} is no key: did you mean {key!r}?)" if close else ""


def load_server_config(
    path: Path | None, overrides: Mapping[str, Any] | None = None
) -> ServerProcessConfig:
    """A server's configuration from `path` (may be None) with `overrides` on top."""
    document, base = _read(path)
    _resolve_paths(document, base, _PATH_KEYS)
    override = dict(overrides or {})
    _resolve_paths(override, Path.cwd(), _PATH_KEYS)
    merged = _merge(document, override)
    where = f"{path}: " if path is not None else ""
    for key in ("server_id", "certs_dir", "app"):
        if key not in merged:
            raise ConfigError(
                f"{where}{key} is required{_misspelt(merged, key, ServerProcessConfig)}"
            )
    core_table = _table(merged.pop("core", {}), f"{where}[core]")
    identity = sorted(set(core_table) & set(SERVER_IDENTITY_FIELDS))
    if identity:
        raise ConfigError(f"{where}[core] may not set {identity}; use the top-level keys")
    identity_table = {"server_id": str(merged["server_id"]), **core_table}
    core = _convert(ServerConfig, identity_table, f"{where}[core]")
    driver = _convert(DriverConfig, merged.pop("driver", {}), f"{where}[driver]")
    limits = _limits(
        merged.pop("limits", {}), f"{where}[limits]", frame_bytes_max=core.frame_bytes_max
    )
    top = _convert(
        ServerProcessConfig,
        merged,
        f"{where}top level",
        {"core": ServerConfig, "driver": DriverConfig, "limits": ConnectionLimits},
    )
    return dataclasses.replace(top, core=core, driver=driver, limits=limits)


def _limits(value: Any, where: str, *, frame_bytes_max: int) -> ConnectionLimits:
    """The [limits] table: any `ConnectionLimits` field but `wire`, which the node's
    `core.frame_bytes_max` sets; the partial-frame budget is checked against that frame size,
    and when not set it is the default raised to hold one such frame."""
    table = _table(value, where)
    if "wire" in table:
        raise ConfigError(f"{where} may not set wire; core.frame_bytes_max bounds frames")
    wire = dataclasses.replace(DEFAULT_CONFIG, frame_bytes_max=frame_bytes_max)
    if "partial_frames_bytes_max" not in table:
        default = ConnectionLimits().partial_frames_bytes_max
        table = {**table, "partial_frames_bytes_max": max(default, wire.buffered_bytes_max)}
    # Keys and types first (the default wire may not fit the budget the table gives), then the
    # bounds with the node's own frame size.
    checked = _convert(ConnectionLimits, {**table, "partial_frames_bytes_max": INTEGER_MAX}, where)
    try:
        return dataclasses.replace(
            checked,
            wire=wire,
            partial_frames_bytes_max=table["partial_frames_bytes_max"],
        )
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error
