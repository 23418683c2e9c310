"""Bad configuration at the `forehand` command line: one line naming the problem, no traceback.

Each case runs a real subcommand (`manager`, `server`, `certs`, `admin`, the operator commands)
in-process with Click's runner, on a real certificate directory, and checks the exit status and
that stderr is exactly one line naming the offending key, value or file. Two cases run the
console entry point as a subprocess, to show the same holds across a process boundary.
"""

from __future__ import annotations

import datetime
import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from forehand.cli import app
from forehand.errors import ConfigError
from forehand.runtime.certs import make_cluster_certs
from forehand.runtime.config import load_server_config, server_warnings
from forehand.runtime.keys import CLUSTER_KEYS_FILE, add_cluster_key, load_cluster_keys

FOREHAND = [sys.executable, "-c", "from forehand.cli import main; main()"]
CART_APP = "examples.cart.app:app"
REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cluster's certificates (manager, s1, admin) and key file."""
    directory = tmp_path_factory.mktemp("edge") / "certs"
    make_cluster_certs(directory, ["manager", "s1", "admin"], days=1)
    add_cluster_key(directory / CLUSTER_KEYS_FILE)
    return directory


def run_cli(*arguments: str) -> tuple[int, list[str]]:
    """Run `forehand ARGUMENTS` in-process; its exit status and stderr lines.

    An exception escaping the command (what a user sees as a traceback) fails the test here.
    """
    result = CliRunner().invoke(app, list(arguments))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"forehand {arguments} raised {result.exception!r}")
    return result.exit_code, [line for line in result.stderr.splitlines() if line.strip()]


def copy_certs(certs_dir: Path, target: Path, damage: Callable[[Path], object]) -> Path:
    """A copy of the certificate directory with `damage` done to it."""
    shutil.copytree(certs_dir, target)
    damage(target)
    return target


def expired_certificate(directory: Path, node: str) -> None:
    """Re-issue `node`'s certificate, same key and CA, with a validity that has ended."""
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / f"{node}.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ended = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ended - datetime.timedelta(days=2))
        .not_valid_after(ended)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / f"{node}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def foreign_certificate(directory: Path, node: str) -> None:
    """Give `node` a certificate and key of another cluster's CA."""
    other = make_cluster_certs(directory.parent / "other", [node], days=1).node(node)
    shutil.copy(other.certificate_path, directory / f"{node}.pem")
    shutil.copy(other.key_path, directory / f"{node}.key")


MANAGER_CASES: dict[str, tuple[list[str], str]] = {
    "a misspelt key": (
        ["--set", "core.failure_timeot_ms=1000"],
        "unknown key(s) ['failure_timeot_ms'] in [core] (did you mean 'failure_timeout_ms'?)",
    ),
    "a table's key at the top level": (
        ["--set", "rebalance_interval_ms=0"],
        "unknown key(s) ['rebalance_interval_ms'] in top level (did you mean "
        "'core.rebalance_interval_ms'?)",
    ),
    "--set on a table's name": (["--set", "core=5"], "[core] must be a table"),
    "a key given by its flag and by --set": (
        ["--set", "listen=127.0.0.1:1"],
        "listen is given twice, by --listen and by --set listen=; give it once",
    ),
    "NaN in a table": (["--set", "core.overload_threshold=nan"], "overload_threshold must be"),
    "integer beyond 64 bits": (
        ["--set", "core.failure_timeout_ms=99999999999999999999"],
        "failure_timeout_ms must fit in 64 bits",
    ),
    "ready file in a missing directory": (
        ["--ready-file", "/nonexistent-dir/ready"],
        "ready_file /nonexistent-dir/ready: the directory /nonexistent-dir does not exist",
    ),
    "etcd CA file missing": (
        ["--store", "etcd://127.0.0.1:2379", "--set", 'etcd_ca="/nonexistent.pem"'],
        "etcd_ca /nonexistent.pem is not a file",
    ),
}


def case_id(case: str) -> str:
    """A case's name as a test id that a shell passes as one word."""
    return case.replace(" ", "-").replace("'", "")


@pytest.mark.parametrize("case", sorted(MANAGER_CASES), ids=case_id)
def test_manager_refuses_bad_settings_in_one_line(certs_dir: Path, case: str) -> None:
    """Settings that crashed `forehand manager` with a traceback, or were taken and failed
    later, exit 2 with one line naming the key or file."""
    arguments, expected = MANAGER_CASES[case]
    base = ["manager", "--certs-dir", str(certs_dir), "--listen", "127.0.0.1:0"]
    status, lines = run_cli(*base, "--store", "memory", *arguments)
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith("forehand manager:"), lines
    assert expected in lines[0]


ETCD_FILES: dict[str, tuple[tuple[str, str, str], str]] = {
    "a key given as the etcd certificate": (
        ("ca.pem", "s1.key", "manager.key"),
        "etcd_certificate {certs}/s1.key is not a PEM certificate",
    ),
    "a key given as the etcd CA": (
        ("manager.key", "manager.pem", "manager.key"),
        "etcd_ca {certs}/manager.key is not a PEM certificate",
    ),
    "a certificate given as the etcd key": (
        ("ca.pem", "s1.pem", "s1.pem"),
        "etcd_private_key {certs}/s1.pem is not an unencrypted PEM private key",
    ),
    "the etcd key of another certificate": (
        ("ca.pem", "s1.pem", "manager.key"),
        "etcd_private_key {certs}/manager.key is not the key of etcd_certificate {certs}/s1.pem",
    ),
}


@pytest.mark.parametrize("case", sorted(ETCD_FILES), ids=case_id)
def test_manager_names_bad_etcd_tls_files(certs_dir: Path, case: str) -> None:
    """etcd TLS files that are not PEM or do not match, which the etcd client refused with an
    SSLError traceback when it opened, exit 2 at load naming the setting and the file."""
    (ca, certificate, key), expected = ETCD_FILES[case]
    status, lines = run_cli(
        "manager",
        "--certs-dir",
        str(certs_dir),
        "--listen",
        "127.0.0.1:0",
        "--store",
        "etcd://127.0.0.1:2379",
        "--set",
        f'etcd_ca="{certs_dir / ca}"',
        "--set",
        f'etcd_certificate="{certs_dir / certificate}"',
        "--set",
        f'etcd_private_key="{certs_dir / key}"',
    )
    assert status == 2, lines
    assert len(lines) == 1 and expected.format(certs=certs_dir) in lines[0], lines


DAMAGES: dict[str, tuple[Callable[[Path], object], str]] = {
    "CA certificate not PEM": (
        lambda d: (d / "ca.pem").write_text("garbage\n"),
        "ca.pem is not a PEM certificate",
    ),
    "node key not PEM": (
        lambda d: (d / "manager.key").write_text("garbage\n"),
        "manager.key is not an unencrypted PEM private key",
    ),
    "node key of another node": (
        lambda d: shutil.copy(d / "s1.key", d / "manager.key"),
        "manager.key is not the key of",
    ),
    "node certificate of another CA": (
        lambda d: foreign_certificate(d, "manager"),
        "was not issued by the cluster CA",
    ),
    "node certificate expired": (
        lambda d: expired_certificate(d, "manager"),
        "manager.pem expired at",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGES), ids=case_id)
def test_manager_names_the_bad_key_material(certs_dir: Path, tmp_path: Path, case: str) -> None:
    """Unreadable, mismatched, foreign or expired certificates and keys, which TLS refused with
    an opaque traceback, exit 2 naming the file and what is wrong with it."""
    damage, expected = DAMAGES[case]
    directory = copy_certs(certs_dir, tmp_path / "certs", damage)
    status, lines = run_cli(
        "manager", "--certs-dir", str(directory), "--listen", "127.0.0.1:0", "--store", "memory"
    )
    assert status == 2, lines
    assert len(lines) == 1 and expected in lines[0], lines


def test_server_refuses_a_nan_weight_or_an_empty_zone(certs_dir: Path) -> None:
    """A NaN or infinite weight and an empty zone, which the server took and the manager then
    ignored its join for, exit 2 with one line."""
    base = ["server", "--certs-dir", str(certs_dir), "--server-id", "s1"]
    base += ["--listen", "127.0.0.1:0", "--manager", "127.0.0.1:1"]
    cart = ["--app-dir", str(REPOSITORY), "--app", CART_APP]
    cases = [
        ([*cart, "--set", "weight=nan"], "weight must be a finite number"),
        ([*cart, "--set", "weight=inf"], "weight must be a finite number"),
        ([*cart, "--zone", ""], "zone must not be empty"),
    ]
    for arguments, expected in cases:
        status, lines = run_cli(*base, *arguments)
        assert status == 2, (arguments, lines)
        assert len(lines) == 1 and expected in lines[0], (arguments, lines)


def test_server_warns_of_identity_the_manager_would_refuse(certs_dir: Path) -> None:
    """A weight or zone beyond the default placement bounds, which a manager refuses without
    telling the server, is named in a warning (a manager may raise the bounds)."""
    base = {"server_id": "s1", "certs_dir": str(certs_dir), "app": CART_APP}
    assert server_warnings(load_server_config(None, base)) == []
    warned = server_warnings(load_server_config(None, {**base, "weight": 500.0, "zone": "z" * 65}))
    assert len(warned) == 2
    assert "weight 500 is above 100" in warned[0] and "zone is 65 characters" in warned[1]
    with pytest.raises(ConfigError, match=r"weight must be a number >= 0\.001"):
        load_server_config(None, {**base, "weight": 0.0})


def test_certs_refuses_bad_directories_and_key_files(tmp_path: Path) -> None:
    """`forehand certs` into a file, onto a damaged CA key or a damaged key file exits 2 with one
    line, and leaves the damaged key file as it was."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    damaged_ca = tmp_path / "damaged-ca"
    damaged_ca.mkdir()
    (damaged_ca / "ca.pem").write_text("garbage")
    (damaged_ca / "ca.key").write_text("garbage")
    damaged_keys = tmp_path / "damaged-keys"
    damaged_keys.mkdir()
    (damaged_keys / CLUSTER_KEYS_FILE).write_text("current = \n")
    cases = [
        ([str(a_file), "n1"], f"cannot write to {a_file}"),
        ([str(damaged_ca), "n1"], "ca.pem is not a PEM certificate"),
        ([str(damaged_keys), "n1"], "is not valid TOML"),
    ]
    for arguments, expected in cases:
        status, lines = run_cli("certs", *arguments)
        assert status == 2, (arguments, lines)
        assert len(lines) == 1 and expected in lines[0], (arguments, lines)
    assert (damaged_keys / CLUSTER_KEYS_FILE).read_text() == "current = \n"
    assert not (damaged_keys / "n1.pem").exists()


def test_admin_commands_name_local_mistakes(certs_dir: Path, tmp_path: Path) -> None:
    """A session id that is not 32 hex digits, and operator credentials that are missing or
    damaged, are reported as such, not as a traceback or as the manager refusing."""
    manager = ["--manager", "127.0.0.1:1"]
    status, lines = run_cli("admin", "move", "zz", "--certs-dir", str(certs_dir), *manager)
    assert status == 2 and lines == ["forehand admin: a session id is 32 hex digits, got 'zz'"]
    status, lines = run_cli("admin", "move", "abcd", "--certs-dir", str(certs_dir), *manager)
    assert status == 2 and "32 hex digits, got 'abcd'" in lines[0]
    # The target is `--to`, as `forehand handoff` takes it (a walkthrough tried `--node`, the
    # operator's own certificate); `--target` still works. Parsed, the move goes to the manager.
    for option in ("--to", "--target"):
        args = ("admin", "move", "ab" * 16, option, "s2", "--certs-dir", str(certs_dir), *manager)
        status, lines = run_cli(*args)
        assert status == 1 and "127.0.0.1:1" in lines[-1], (option, lines)
    # Local set-up is a configuration error (exit 2, as README says of a missing file).
    status, lines = run_cli("admin", "status", "--certs-dir", str(tmp_path), *manager)
    assert status == 2 and len(lines) == 1
    assert f"missing {tmp_path / 'admin.pem'}: the operator's certificate" in lines[0]
    damaged = copy_certs(certs_dir, tmp_path / "certs", lambda d: (d / "admin.key").write_text(""))
    status, lines = run_cli("admin", "status", "--certs-dir", str(damaged), *manager)
    assert status == 2 and len(lines) == 1
    assert "admin.key is not an unencrypted PEM private key" in lines[0]


@pytest.fixture
def not_the_api(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server that answers every GET with an HTML page (a proxy's login page), or
    under /json/ with a JSON object of another API."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            is_json = self.path.startswith("/json/")
            body = b'{"members": []}' if is_json else b"<html>please log in</html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/json" if is_json else "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_operator_commands_refuse_bad_options_and_answers(not_the_api: str) -> None:
    """A timeout that is not positive is a usage error (exit 2), and a URL that answers with
    something other than JSON, or with JSON of another shape, exits 1 saying so, without a
    traceback."""
    status, lines = run_cli("status", "--url", not_the_api, "--timeout-s", "-1")
    assert status == 2 and any("--timeout-s" in line for line in lines)
    status, lines = run_cli("status", "--url", not_the_api)
    assert status == 1
    assert lines == [
        f"forehand: {not_the_api} answered /api/status with text/html, not JSON: "
        "is it the admin API?"
    ]
    status, lines = run_cli("status", "--url", f"{not_the_api}/json")
    assert status == 1
    assert lines == [
        f"forehand: the answer from {not_the_api}/json does not look like the admin API's "
        "(KeyError: 'map_version')"
    ]


def run_process(*arguments: str) -> tuple[int, list[str]]:
    """Run `forehand ARGUMENTS` as a process (for failures once the process runs, after it
    configured logging); its exit status and stderr lines."""
    completed = subprocess.run(
        [*FOREHAND, *arguments], capture_output=True, text=True, check=False, timeout=60
    )
    return completed.returncode, [line for line in completed.stderr.splitlines() if line.strip()]


def test_failures_while_starting_are_one_line(certs_dir: Path, tmp_path: Path) -> None:
    """A process that fails as it starts (a config file that is not text, a key file that is
    not text, an audit log it cannot open, an app module that raises on import) exits 2 with
    one line naming the file (for the app: the module, the error and where it was raised)."""
    config_file = tmp_path / "manager.toml"
    config_file.write_bytes(b"\xff\xfe\x00 not text")
    keys_file = tmp_path / "keys.toml"
    keys_file.write_bytes(b"\xff\xfe\x00 not text")
    (tmp_path / "broken_app.py").write_text("VALUE = 1\nraise RuntimeError('no database')\n")
    manager = ["manager", "--certs-dir", str(certs_dir), "--listen", "127.0.0.1:0"]
    manager += ["--store", "memory"]
    server = ["server", "--certs-dir", str(certs_dir), "--server-id", "s1"]
    server += ["--listen", "127.0.0.1:0"]
    cases = [
        (["manager", "--config", str(config_file)], f"config file {config_file} is not UTF-8"),
        ([*manager, "--keys-file", str(keys_file)], f"cluster key file {keys_file} is not UTF-8"),
        (
            [*manager, "--set", "admin_http_port=0", "--set", 'audit_log_path="/proc/a.jsonl"'],
            "cannot open audit_log_path /proc/a.jsonl",
        ),
        (
            [*server, "--app-dir", str(tmp_path), "--app", "broken_app:app"],
            "importing the app module 'broken_app' raised RuntimeError: no database at "
            f"{tmp_path / 'broken_app.py'}:2",
        ),
    ]
    for arguments, expected in cases:
        status, lines = run_process(*arguments)
        assert status == 2, (arguments, lines)
        assert len(lines) == 1 and expected in lines[0], (arguments, lines)


def test_a_damaged_key_file_is_refused_by_the_loader(tmp_path: Path) -> None:
    """The key file loader turns a non-UTF-8 file into ConfigError naming the file."""
    path = tmp_path / CLUSTER_KEYS_FILE
    path.write_bytes(b"\x80\x81")
    with pytest.raises(ConfigError, match=f"cluster key file {path} is not UTF-8 text"):
        load_cluster_keys(path)
