"""Process configuration (TOML, flags, --set), the cluster key file, and the CLI around them."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from forehand.core import FailureDetectorKind
from forehand.core.tokens import TokenInvalid, TokenSealer
from forehand.errors import ConfigError
from forehand.runtime.certs import make_cluster_certs
from forehand.runtime.config import (
    load_manager_config,
    load_server_config,
    parse_address,
    parse_overrides,
)
from forehand.runtime.keys import (
    CLUSTER_KEYS_FILE,
    add_cluster_key,
    load_cluster_keys,
    load_key_ring,
    retire_cluster_key,
    rotate_cluster_key,
)

FOREHAND = [sys.executable, "-c", "from forehand.cli import main; main()"]


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A certificate directory for configurations to point at."""
    directory = tmp_path_factory.mktemp("config") / "certs"
    make_cluster_certs(directory, ["manager", "s1"], days=1)
    return directory


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_manager_config_from_toml_with_overrides(certs_dir: Path, tmp_path: Path) -> None:
    """File values, tables and relative paths load; flags and --set override the file."""
    (tmp_path / "certs").symlink_to(certs_dir)
    config_file = write(
        tmp_path / "manager.toml",
        'listen = "127.0.0.1:7000"\ncerts_dir = "certs"\nstore_path = "map.sqlite"\n'
        '[core]\nfailure_timeout_ms = 4000\nfailure_detector = "phi_accrual"\n'
        "[placement]\nreplica_count = 1\n",
    )
    overrides = {"listen": "127.0.0.1:0", **parse_overrides(["core.suspect_timeout_ms=900"])}
    config = load_manager_config(config_file, overrides)
    assert config.listen == "127.0.0.1:0"
    assert config.certs_dir == (tmp_path / "certs").resolve()
    assert config.store_path == tmp_path.resolve() / "map.sqlite"
    assert config.core.failure_timeout_ms == 4000
    assert config.core.suspect_timeout_ms == 900
    assert config.core.failure_detector is FailureDetectorKind.PHI_ACCRUAL
    assert config.placement.replica_count == 1
    assert config.key_path == config.certs_dir / CLUSTER_KEYS_FILE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('certs_dir = "{certs}"\nlisten_port = 7000\n', "unknown key"),
        ('certs_dir = "{certs}"\n[core]\nfailure_timeout_ms = "soon"\n', "Expected `int`"),
        ('certs_dir = "{certs}"\n[core]\nsuspect_timeout_ms = 9000\n', "suspect_timeout_ms"),
        ('certs_dir = "{certs}"\n[core]\nnode_id = "boss"\n', "node_id"),
        (
            'certs_dir = "{certs}"\n[core]\nclient_transport = "quic"\n',
            "may not set client_transport; use the top-level transport",
        ),
        ('certs_dir = "{certs}"\ntransport = "carrier-pigeon"\n', "transport"),
        ('certs_dir = "{certs}"\nlisten = "localhost"\n', "host:port"),
        ('listen = "127.0.0.1:7000"\n', "certs_dir is required"),
        ('cert_dir = "certs"\n', "'cert_dir' is no key: did you mean 'certs_dir'"),
        ('certs_dir = "/nonexistent"\n', "/nonexistent does not exist"),
        ('certs_dir = "{empty}"\n', "holds no ca.pem"),
        ("certs_dir = \n", "not valid TOML"),
        ('certs_dir = "{certs}"\nadmin_http_connections_max = 0\n', "connections_max must be 1"),
        ('certs_dir = "{certs}"\nadmin_http_request_timeout_ms = -5\n', "request_timeout_ms"),
        ('certs_dir = "{certs}"\nadmin_http_idle_timeout_ms = 0\n', "idle_timeout_ms must be"),
        ('certs_dir = "{certs}"\nadmin_http_write_buffer_bytes = 100\n', "1024 to 67108864"),
        ('certs_dir = "{certs}"\nadmin_http_write_stall_timeout_ms = 0\n', "stall_timeout_ms"),
        ('certs_dir = "{certs}"\nadmin_http_idle_timeout_ms = 1.5\n', "Expected `int`"),
        (
            'certs_dir = "{certs}"\n[core]\ncredential_lifetime_ms = 1500\n',
            "credential_lifetime_ms must be at least 2000, got 1500",
        ),
    ],
)
def test_invalid_manager_config_names_the_problem(
    certs_dir: Path, tmp_path: Path, text: str, message: str
) -> None:
    """Every invalid manager configuration raises ConfigError saying what is wrong."""
    (tmp_path / "empty").mkdir()
    text = text.replace("{certs}", str(certs_dir)).replace("{empty}", str(tmp_path / "empty"))
    config_file = write(tmp_path / "manager.toml", text)
    with pytest.raises(ConfigError, match=message):
        load_manager_config(config_file)


def test_server_config_identity_comes_from_the_top_level(certs_dir: Path, tmp_path: Path) -> None:
    """A server's [core] table tunes the core; its identity fields come from the top level."""
    base = f'server_id = "s1"\ncerts_dir = "{certs_dir}"\napp = "examples.cart.app:app"\n'
    config = load_server_config(
        write(tmp_path / "s1.toml", base + 'zone = "b"\n[core]\nbackup_period_ms = 250\n')
    )
    core = config.core_config(address="127.0.0.1:7101", incarnation=7)
    assert (core.server_id, core.zone, core.address, core.incarnation) == (
        "s1",
        "b",
        "127.0.0.1:7101",
        7,
    )
    assert core.backup_period_ms == 250
    with pytest.raises(ConfigError, match="may not set"):
        load_server_config(write(tmp_path / "bad.toml", base + '[core]\nzone = "c"\n'))
    with pytest.raises(ConfigError, match="app must be module:attribute"):
        load_server_config(None, {"server_id": "s1", "certs_dir": str(certs_dir), "app": "x"})
    with pytest.raises(ConfigError, match=r"server_id is required$"):
        load_server_config(None, {"certs_dir": str(certs_dir), "app": "a:b"})
    with pytest.raises(ConfigError, match="'severid' is no key: did you mean 'server_id'"):
        load_server_config(None, {"severid": "s1", "certs_dir": str(certs_dir), "app": "a:b"})


def test_a_server_s_leave_timeout_is_bounded(certs_dir: Path, tmp_path: Path) -> None:
    """`leave_timeout_ms` is 30 s unless set; 0 turns the drain on SIGTERM off; a negative one
    or one over an hour is refused, naming the range."""
    base = f'server_id = "s1"\ncerts_dir = "{certs_dir}"\napp = "examples.cart.app:app"\n'
    assert load_server_config(write(tmp_path / "s1.toml", base)).leave_timeout_ms == 30_000
    off = load_server_config(write(tmp_path / "off.toml", base + "leave_timeout_ms = 0\n"))
    assert off.leave_timeout_ms == 0
    for value in (-1, 3_600_001):
        bad = write(tmp_path / "bad.toml", base + f"leave_timeout_ms = {value}\n")
        with pytest.raises(ConfigError, match=r"leave_timeout_ms must be 0 \(stop at once\)"):
            load_server_config(bad)


def test_overrides_and_addresses_parse() -> None:
    """--set values are TOML values (bare words are strings); addresses are host:port."""
    parsed = parse_overrides(["core.a=1", "core.b=0.5", "c=true", "d=word", 'e="quoted"'])
    assert parsed == {"core": {"a": 1, "b": 0.5}, "c": True, "d": "word", "e": "quoted"}
    assert parse_address("[::1]:7000", where="x") == ("::1", 7000)
    with pytest.raises(ConfigError):
        parse_overrides(["no-equals-sign"])
    with pytest.raises(ConfigError):
        parse_address("127.0.0.1:70000", where="x")
    # A URL was read as the host `https://127.0.0.1` and failed in name resolution 7 s later.
    for url in ("https://127.0.0.1:7000", "127.0.0.1:7000/api", "tls://[::1]:7000"):
        with pytest.raises(ConfigError, match="without a scheme or path"):
            parse_address(url, where="x")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[::1:7655", "IPv6 in brackets"),
        ("::1]:7655", "IPv6 in brackets"),
        ("0.0.0.0:7000", "others can connect to"),
        ("[::]:7000", "others can connect to"),
        ("s1.example:0", "others can connect to"),
    ],
)
def test_an_address_to_dial_is_one_others_can_reach(text: str, problem: str) -> None:
    """An advertised address or a manager endpoint with a wildcard host or port 0 was taken,
    and the manager placed parts on a server nobody could reach; a lone bracket was dropped."""
    with pytest.raises(ConfigError, match=problem):
        parse_address(text, where="advertise", dialable=True)
    if "[" not in text and "]" not in text:
        parse_address(text, where="listen")  # A listener may ask for any of these.


def test_a_server_refuses_an_unreachable_advertised_address(
    certs_dir: Path, tmp_path: Path
) -> None:
    base = f'server_id = "s1"\ncerts_dir = "{certs_dir}"\napp = "examples.cart.app:app"\n'
    for advertise in ("0.0.0.0:0", "s1.example:0", "[::]:7101"):
        with pytest.raises(ConfigError, match="advertise must be an address others can"):
            load_server_config(write(tmp_path / "s1.toml", base + f'advertise = "{advertise}"\n'))
    with pytest.raises(ConfigError, match="manager must be an address others can"):
        load_server_config(write(tmp_path / "s1.toml", base + 'manager = "0.0.0.0:7000"\n'))


def test_cluster_keys_rotate_in_three_steps(tmp_path: Path) -> None:
    """A key file holds several keys: an added key opens before it seals, and once it is
    current, values sealed under the old key still open until the old key is removed."""
    path = tmp_path / CLUSTER_KEYS_FILE
    assert add_cluster_key(path) == 1
    assert path.stat().st_mode & 0o777 == 0o600
    old_sealer = TokenSealer(load_key_ring(path), rng=random.Random(1))
    credential = old_sealer.issue_credential(
        session_id=bytes(16), client_id=bytes(16), now_us=0, lifetime_ms=60_000
    )
    assert add_cluster_key(path) == 2
    assert load_cluster_keys(path).current_key_id == 1
    rotate_cluster_key(path, 2)
    rotated = TokenSealer(load_key_ring(path), rng=random.Random(2))
    assert rotated.key_ring.current_key_id == 2
    assert rotated.open_credential(credential, now_us=1).session_id == bytes(16)
    with pytest.raises(ConfigError, match="cluster key 2 seals: make another key current"):
        retire_cluster_key(path, 2)
    with pytest.raises(ConfigError, match=r"cluster key id 7 is not in .* \(ids: 1, 2\)"):
        retire_cluster_key(path, 7)
    retire_cluster_key(path, 1)
    assert load_cluster_keys(path).keys.keys() == {2}
    with pytest.raises(TokenInvalid):
        TokenSealer(load_key_ring(path), rng=random.Random(3)).open_credential(credential, now_us=1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("current = 1\n", "needs `current"),
        ('current = 2\n[[keys]]\nid = 1\nkey = "' + "00" * 32 + '"\n', "not in the file"),
        ('current = 1\n[[keys]]\nid = 1\nkey = "abcd"\n', "2 bytes"),
        ('current = 1\n[[keys]]\nid = 1\nkey = "zz"\n', "not hexadecimal"),
    ],
)
def test_invalid_key_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    """A key file without keys, naming a missing current key, or with bad keys is refused."""
    with pytest.raises(ConfigError, match=message):
        load_cluster_keys(write(tmp_path / CLUSTER_KEYS_FILE, text))


def test_cli_exits_2_on_invalid_config(tmp_path: Path) -> None:
    """`forehand manager` with an invalid configuration prints one line and exits with 2."""
    config_file = write(tmp_path / "manager.toml", 'certs_dir = "/nonexistent"\n')
    completed = subprocess.run(
        [*FOREHAND, "manager", "--config", str(config_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().startswith("forehand manager:")
    assert "/nonexistent does not exist" in completed.stderr


def test_cli_help_documents_every_option_with_its_unit() -> None:
    """`--help` of manager and server lists every flag and the keys of their TOML tables."""
    outputs = {}
    for command in ("manager", "server"):
        completed = subprocess.run(
            [*FOREHAND, command, "--help"],
            capture_output=True,
            text=True,
            check=True,
            env={"COLUMNS": "200", "TERM": "dumb", "PATH": ""},
        )
        outputs[command] = " ".join(completed.stdout.split())
    manager, server = outputs["manager"], outputs["server"]
    for flag in ("--listen", "--transport", "--certs-dir", "--store-path", "--set", "--config"):
        assert flag in manager
    assert "failure_timeout_ms" in manager and "replica_count" in manager
    assert "milliseconds" in manager
    for flag in ("--app", "--server-id", "--manager", "--advertise", "--zone", "--weight"):
        assert flag in server
    assert "load-report-interval-ms" in server and "backup_period_ms" in server


def certs_command(
    directory: Path, *arguments: str, check: bool
) -> subprocess.CompletedProcess[str]:
    """`forehand certs DIRECTORY ARGUMENTS`, its output captured."""
    return subprocess.run(
        [*FOREHAND, "certs", str(directory), *arguments],
        capture_output=True,
        text=True,
        check=check,
    )


def test_certs_command_writes_admin_certificate_and_keys(tmp_path: Path) -> None:
    """`forehand certs DIR NODES` writes the CA, the nodes, admin, and a key file."""
    directory = tmp_path / "certs"
    certs_command(directory, "manager", "s1", check=True)
    for name in ("ca.pem", "manager.pem", "s1.key", "admin.pem", "admin.key", CLUSTER_KEYS_FILE):
        assert (directory / name).is_file(), name
    assert load_cluster_keys(directory / CLUSTER_KEYS_FILE).key_ring().key_ids == (1,)
    admin = (directory / "admin.pem").read_bytes()
    certs_command(directory, "--add-key", "--current-key", "2", check=True)
    assert load_cluster_keys(directory / CLUSTER_KEYS_FILE).current_key_id == 2
    # A key rotation leaves the operator's certificate as it was; naming admin renews it.
    assert (directory / "admin.pem").read_bytes() == admin
    certs_command(directory, "admin", check=True)
    assert (directory / "admin.pem").read_bytes() != admin
    # A sealing key the file does not hold, retiring the key that seals, or retiring beside
    # another step (each needs every node restarted before the next) is refused before
    # anything is written.
    files = {path.name: path.read_bytes() for path in directory.iterdir()}
    for arguments, message in (
        (("s2", "--current-key", "9"), "cluster key id 9 is not in"),
        (("s2", "--retire-key", "2"), "cluster key 2 seals"),
        (("--current-key", "2", "--retire-key", "1"), "--retire-key runs alone"),
    ):
        refused = certs_command(directory, *arguments, check=False)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert {path.name: path.read_bytes() for path in directory.iterdir()} == files
    assert "ids: 1, 2" in certs_command(directory, "--current-key", "9", check=False).stderr
    # The old key goes.
    retired = certs_command(directory, "--retire-key", "1", check=True)
    assert "cluster key 1 retired" in retired.stdout
    assert load_cluster_keys(directory / CLUSTER_KEYS_FILE).key_ring().key_ids == (2,)


def test_the_limits_table_bounds_client_connections(certs_dir: Path, tmp_path: Path) -> None:
    """[limits] (or `--set limits.<name>`) sets the client listener's ConnectionLimits on both
    processes, checked as the transport checks them; `wire` is the core's frame bound's."""
    manager = load_manager_config(
        write(
            tmp_path / "manager.toml", f'certs_dir = "{certs_dir}"\n[limits]\nhandshakes_max = 50\n'
        ),
        parse_overrides(["limits.connections_max=20000", "limits.handshakes_unvalidated_max=5"]),
    )
    assert (manager.limits.connections_max, manager.limits.handshakes_max) == (20_000, 50)
    assert manager.limits.handshakes_unvalidated_bound == 5
    base = f'server_id = "s1"\ncerts_dir = "{certs_dir}"\napp = "examples.cart.app:app"\n'
    server = load_server_config(
        write(tmp_path / "s1.toml", base + "[limits]\npartial_frames_bytes_max = 8388608\n")
    )
    assert server.limits.partial_frames_bytes_max == 8 << 20
    assert load_server_config(write(tmp_path / "s2.toml", base)).limits.connections_max == 10_000
    alone = load_server_config(write(tmp_path / "s4.toml", base + "[limits]\nhandshakes_max = 8\n"))
    assert alone.limits.handshakes_unvalidated_bound == 2  # A quarter of handshakes_max.
    # The budget is checked against the node's own frame size: 512 KiB holds a 64 KiB frame.
    small = load_server_config(
        write(
            tmp_path / "s3.toml",
            base + "[core]\nframe_bytes_max = 65536\n[limits]\npartial_frames_bytes_max = 524288\n",
        )
    )
    assert (small.limits.wire.frame_bytes_max, small.limits.partial_frames_bytes_max) == (
        65_536,
        524_288,
    )
    for table, message in (
        ("connections_max = 0", "connections_max must be a positive int"),
        ("handshake_max = 5", "did you mean 'handshakes_max'"),
        ("wire = 1", "may not set wire"),
        ("partial_frames_bytes_max = 1024", "must hold one whole frame"),
        ("handshakes_unvalidated_max = -1", "handshakes_unvalidated_max must be an int of 0"),
        ("handshakes_unvalidated_max = 1001", "must be at most handshakes_max=1000"),
        ("handshakes_unvalidated_max = 1.5", "handshakes_unvalidated_max"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_server_config(write(tmp_path / "bad.toml", base + f"[limits]\n{table}\n"))
