"""`forehand up`: a development cluster a client and the ops CLI can use, that reports a server
that dies, stops every process on Ctrl-C, keeps its CA between runs, and refuses bad options
before starting anything.

`forehand up` runs as a subprocess, as a user runs it; its processes are found by pid from the
`up.json` it writes while up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import forehand
from forehand._up import UpOptions, _up
from forehand.demo._cluster import ClusterConfig, DemoCluster, write_toml
from forehand.errors import ConfigError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FOREHAND = [sys.executable, "-c", "from forehand.cli import main; main()"]
START_TIMEOUT_S = 90.0
"""A cluster not up after this long is hung; not a timing claim."""
STOP_TIMEOUT_S = 30.0


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


_HANGUP_DEFAULT = (
    "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
"""Run the command that follows with SIGHUP at its default disposition."""


def _start(directory: Path, *options: str, ignore_hangup: bool = False) -> subprocess.Popen[str]:
    """`forehand up` of the cart app on any free ports; `options` come last, so they win. With
    `ignore_hangup` it starts with SIGHUP and SIGINT ignored, as `nohup forehand up &` does."""
    command = [*FOREHAND, "up", "--app", "examples.cart.app:app", "--app-dir", str(REPO)]
    command += ["--dir", str(directory), "--port", "0", "--dashboard-port", "0", *options]
    if ignore_hangup:
        # As `nohup forehand up &` from a script: SIGHUP ignored, and SIGINT too (a shell starts
        # background jobs so). Both exec the command: the pid stays the same.
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", "nohup", *command]
    else:
        # As from a terminal, whatever this test run inherited: under `nohup make test` SIGHUP
        # is ignored here, `forehand up` rightly keeps ignoring it, and a shell cannot reset a
        # signal ignored when it started. The exec keeps the pid.
        command = [sys.executable, "-c", _HANGUP_DEFAULT, *command]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=directory.parent,
    )


def _wait_up(process: subprocess.Popen[str], directory: Path) -> dict[str, Any]:
    state_path = directory / "up.json"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not state_path.is_file():
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"forehand up exited with {process.returncode}:\n{output}")
        assert time.monotonic() < deadline, "forehand up did not come up"
        time.sleep(0.1)
    state: dict[str, Any] = json.loads(state_path.read_text(encoding="utf-8"))
    return state


def _stop(process: subprocess.Popen[str], how: signal.Signals = signal.SIGINT) -> str:
    """Ctrl-C (or `how`), then its output; it must exit 0."""
    process.send_signal(how)
    output, _ = process.communicate(timeout=STOP_TIMEOUT_S)
    assert process.returncode == 0, output
    return output


def _kill_all(process: subprocess.Popen[str], directory: Path) -> None:
    """After a failed check: SIGKILL `forehand up` if it still runs, and the processes its
    up.json names (it starts them in sessions of their own, so they would outlive it)."""
    if process.poll() is None:
        process.kill()
        process.wait()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        state = json.loads((directory / "up.json").read_text(encoding="utf-8"))
        for pid in state["pids"].values():
            if _alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)


async def _use(state: dict[str, Any]) -> int:
    async with forehand.connect(state["manager"], ca=state["ca"]) as client:
        session = await client.open_session(parts=["auth", "cart"])
        units: int = await session.call("cart", "add", {"sku": "tea", "quantity": 3})
        return units


def test_up_serves_a_client_reports_a_dead_server_and_stops_every_process(
    tmp_path: Path,
) -> None:
    """A client calls the app through the cluster, `forehand status` reads it with the printed
    URL and token, a second `forehand up` in the same directory is refused, a SIGKILLed server
    is reported while the rest keep running, and Ctrl-C
    stops every process it started and removes up.json; a second run in the same directory
    keeps the CA and the admin token, warns that one server leaves replicated parts without a
    replica; the terminal closing (SIGHUP) stops every process as Ctrl-C does, unless SIGHUP is
    ignored (`nohup forehand up &`), which it then keeps ignoring, while `kill -INT` still stops
    it though a shell's background job starts with SIGINT ignored."""
    directory = tmp_path / "state"
    process = _start(directory, "--servers", "2")
    try:
        state = _wait_up(process, directory)
        assert set(state["servers"]) == {"s1", "s2"}
        second_in_the_same_directory = subprocess.run(
            [
                *FOREHAND,
                "up",
                "--app",
                "examples.cart.app:app",
                "--app-dir",
                str(REPO),
                "--dir",
                str(directory),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second_in_the_same_directory.returncode == 2
        assert "another forehand up is running" in second_in_the_same_directory.stderr
        assert asyncio.run(_use(state)) == 3
        token = Path(state["admin_token_file"]).read_text(encoding="utf-8").strip()
        environment = {
            **os.environ,
            "FOREHAND_ADMIN_URL": state["admin_url"],
            "FOREHAND_ADMIN_TOKEN": token,
        }
        status = subprocess.run(
            [*FOREHAND, "status"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert "s1" in status.stdout and "s2" in status.stdout
        os.kill(state["pids"]["s2"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(state["pids"]["s2"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # Its supervisor polls every 0.2 s; the report must be out by then.
        assert process.poll() is None, "a server's death must not stop the cluster"
        output = _stop(process, signal.SIGHUP)
    finally:
        _kill_all(process, directory)
    assert "Forehand is up" in output and state["manager"] in output
    assert "server s2 was killed by signal 9 (from outside" in output
    assert "the others keep running. Its last lines before, in" in output
    assert not [name for name, pid in state["pids"].items() if _alive(pid)]
    assert not (directory / "up.json").exists()

    ca = (directory / "certs" / "ca.pem").read_bytes()
    again = _start(directory, "--servers", "1", ignore_hangup=True)
    try:
        second = _wait_up(again, directory)
        assert Path(second["ca"]).read_bytes() == ca
        assert Path(second["admin_token_file"]).read_text(encoding="utf-8").strip() == token
        assert set(second["servers"]) == {"s1"}
        again.send_signal(signal.SIGHUP)
        time.sleep(1.0)  # Its supervisor polls every 0.2 s.
        assert again.poll() is None, "under nohup, a hangup must not stop the cluster"
        output = _stop(again)
    finally:
        _kill_all(again, directory)
    assert not [name for name, pid in second["pids"].items() if _alive(pid)]
    assert "warning: with one server the replicated part(s) cart have no replica" in output
    assert not (directory / "up.json").exists()


def _refused(tmp_path: Path, *arguments: str) -> str:
    """Run `forehand up` with `arguments` from `tmp_path`, expecting a refusal: exit status 2
    and one line on stderr starting "forehand up: ", which is returned."""
    finished = subprocess.run(
        [*FOREHAND, "up", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert finished.returncode == 2, finished
    assert finished.stderr.startswith("forehand up: "), finished.stderr
    assert len(finished.stderr.strip().splitlines()) == 1, finished.stderr
    return finished.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--app", "no_such_module:app"), "cannot import the app module 'no_such_module'"),
        (("--app", "examples.cart.app:nothing"), "nothing"),
        (("--app", "examples.cart.app:app", "--servers", "0"), "--servers must be 1 to 32"),
        (("--app", "examples.cart.app:app", "--transport", "http"), "--transport must be one of"),
        (("--app", "examples.cart.app:app", "--port", "70000"), "--port must be 0 to 65535"),
        (("--app", "examples.cart.app:app", "--log-level", "loud"), "--log-level must be one of"),
        (
            ("--app", "examples.cart.app:app", "--server-set", "listen=127.0.0.1:1"),
            "--server-set may not set listen: forehand up sets it",
        ),
        (
            ("--app", "examples.cart.app:app", "--manager-set", "no_value"),
            "--manager-set: --set needs key=value",
        ),
        (
            ("--app", "examples.cart.app:app", "--server-set", "metrics_port=7491"),
            "metrics_port=7491 gives every server the same port; use metrics_port=0",
        ),
    ],
)
def test_up_refuses_bad_options_before_starting_anything(
    tmp_path: Path, options: tuple[str, ...], message: str
) -> None:
    """A bad app or option is one line on stderr and exit status 2; no directory is made, so
    nothing was started."""
    directory = tmp_path / "state"
    stderr = _refused(tmp_path, "--app-dir", str(REPO), "--dir", str(directory), *options)
    assert message in stderr
    assert not directory.exists()


@pytest.mark.parametrize(
    ("option", "setting", "message"),
    [
        ("--manager-set", "core.no_such_key=1", "manager.toml: [core]"),
        ("--server-set", "core.heartbeat_interval_ms=-5", "s1.toml: [core]"),
    ],
)
def test_up_refuses_a_setting_its_processes_would_refuse_in_one_line(
    tmp_path: Path, option: str, setting: str, message: str
) -> None:
    """A setting the process would refuse is found when `up` writes and loads that process's
    configuration: one line naming the file and the key, exit status 2, no process left."""
    directory = tmp_path / "state"
    process = _start(directory, "--servers", "2", option, setting)
    try:
        output, _ = process.communicate(timeout=START_TIMEOUT_S)
    finally:
        _kill_all(process, directory)
    assert process.returncode == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("forehand up: ") and message in lines[0], lines
    assert setting.partition("=")[0].rpartition(".")[2] in lines[0]
    assert not (directory / "up.json").exists()
    assert not (directory / "s1.log").exists()  # Checked before it would have started.


def test_up_passes_settings_to_its_processes(tmp_path: Path) -> None:
    """--manager-set and --server-set reach each process's configuration file (dotted keys into
    their tables, a relative path made absolute from where `up` ran), and the processes run
    with them: the audit log the README's operators turn on appears where it was asked."""
    directory = tmp_path / "state"
    process = _start(
        directory,
        "--servers",
        "2",
        "--manager-set",
        "audit_log_path=audit.jsonl",
        "--manager-set",
        "core.failure_timeout_ms=4321",
        "--server-set",
        "core.heartbeat_interval_ms=333",
        "--server-set",
        "metrics_port=0",
    )
    try:
        _wait_up(process, directory)
        # Each server serves /metrics on a port of its own, listed in up.json.
        state = json.loads((directory / "up.json").read_text(encoding="utf-8"))
        assert sorted(state["metrics"]) == ["s1", "s2"]
        for url in state["metrics"].values():
            with urllib.request.urlopen(url, timeout=10) as answer:
                assert b"forehand_" in answer.read()
        manager = tomllib.loads((directory / "manager.toml").read_text(encoding="utf-8"))
        assert manager["audit_log_path"] == str(tmp_path / "audit.jsonl")
        assert manager["core"]["failure_timeout_ms"] == 4321
        for server_id in ("s1", "s2"):
            server = tomllib.loads((directory / f"{server_id}.toml").read_text(encoding="utf-8"))
            assert server["core"]["heartbeat_interval_ms"] == 333
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (tmp_path / "audit.jsonl").exists():
            assert time.monotonic() < deadline, "the manager opened no audit log"
            time.sleep(0.1)
        output = _stop(process)
    finally:
        _kill_all(process, directory)
    assert "stopping every process" in output


@pytest.mark.parametrize(
    "text",
    ["plain", 'quote " and backslash \\', "new\nline\ttab", "nul \x00 esc \x1b del \x7f", "é 𝄞"],
)
def test_the_configuration_files_up_writes_hold_any_string(tmp_path: Path, text: str) -> None:
    """A value (a path, a token file, an app's setting) with quotes, control characters or
    other scripts reads back as given, and so does a key that is not a bare TOML key. Before,
    a newline or a control character wrote a file the process could not load."""
    path = tmp_path / "x.toml"
    write_toml(path, {"value": text, "odd key": text}, {"core": {"value": text}})
    assert tomllib.loads(path.read_text(encoding="utf-8")) == {
        "value": text,
        "odd key": text,
        "core": {"value": text},
    }


class _FailingCluster(DemoCluster):
    """A cluster whose start fails with `error` (what a refused fork or a full disk raises)."""

    def __init__(self, directory: Path, error: OSError) -> None:
        super().__init__(directory, ClusterConfig(server_ids=("s1",), app="examples.cart.app:app"))
        self.error = error

    async def start(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("where", "line"),
    [
        ("fork", "could not start the cluster: Resource temporarily unavailable"),
        ("pipe", "could not start the cluster: Too many open files"),
        ("outside", "could not start the cluster: No such file or directory (/nowhere/forehand)"),
        ("inside", "cannot use --dir {dir}: Permission denied ({dir}/s1.toml)"),
        ("cwd", "cannot use --dir {dir}: Not a directory"),
        ("disk-full", "cannot use --dir {dir}: No space left on device"),
    ],
)
def test_up_blames_its_directory_only_for_an_error_in_it(
    tmp_path: Path, where: str, line: str
) -> None:
    """An OSError while the cluster starts names --dir when its file lies in the directory (as
    a string, or a path as Popen's cwd gives it) or when it names no file and is not a fork
    refused (a write to a full disk names none); a fork refused or a program missing elsewhere
    is said as it is. Before, every one read as "cannot use --dir"."""
    errors = {
        "fork": BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN)),
        "pipe": OSError(errno.EMFILE, os.strerror(errno.EMFILE)),
        "outside": FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/nowhere/forehand"),
        "inside": PermissionError(
            errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "s1.toml")
        ),
        "cwd": NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), tmp_path),
        "disk-full": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    }
    cluster = _FailingCluster(tmp_path, errors[where])
    options = UpOptions(app="examples.cart.app:app", app_dir=Path.cwd(), directory=tmp_path)
    with pytest.raises(ConfigError) as raised:
        asyncio.run(_up(cluster, options, io.StringIO()))
    assert str(raised.value) == line.format(dir=tmp_path)


def _unusable_directory(tmp_path: Path, case: str) -> Path:
    """A state directory `forehand up` cannot use, as `case` names it."""
    (tmp_path / "afile").write_text("a file", encoding="utf-8")
    if case == "a-file":
        return tmp_path / "afile"
    if case == "under-a-file":
        return tmp_path / "afile" / "state"
    directory = tmp_path / "state"
    directory.mkdir()
    if case == "lock-is-a-directory":
        (directory / "up.lock").mkdir()
    else:
        assert case == "certs-is-a-file"
        (directory / "certs").write_text("a file", encoding="utf-8")
    return directory


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("a-file", "exists and is not a directory"),
        ("under-a-file", "Not a directory"),
        ("lock-is-a-directory", "Is a directory"),
        ("certs-is-a-file", "File exists"),
    ],
)
def test_up_refuses_a_directory_it_cannot_use_in_one_line(
    tmp_path: Path, case: str, reason: str
) -> None:
    """A --dir that is a file, lies under one, or cannot hold the lock or the certificates: one
    line on stderr naming it and the system's reason, exit status 2, and no process started."""
    directory = _unusable_directory(tmp_path, case)
    options = ("--app", "examples.cart.app:app", "--app-dir", str(REPO), "--dir", str(directory))
    stderr = _refused(tmp_path, *options, "--port", "0", "--dashboard-port", "0")
    assert reason in stderr and f"--dir {directory}" in stderr
    assert not (tmp_path / "state" / "manager.log").exists()


def test_up_on_a_busy_port_says_so_once_and_leaves_nothing(tmp_path: Path) -> None:
    """A manager port already taken: exit status 1, the manager's one-line reason (said once,
    not twice), and no server was started."""
    directory = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _start(directory, "--servers", "1", "--port", str(port))
        output, _ = process.communicate(timeout=START_TIMEOUT_S)
    assert process.returncode == 1, output
    assert "the cluster did not start: manager exited with 2" in output
    assert output.count(f"cannot listen on 127.0.0.1:{port}") == 1, output
    assert "address already in use" in output
    assert not (directory / "s1.log").exists()
    assert not (directory / "up.json").exists()


def test_up_refuses_to_start_over_processes_an_earlier_run_left_running(tmp_path: Path) -> None:
    """An up.json whose processes still run (their `forehand up` was SIGKILLed): exit status 2
    naming them, and the store under them is not deleted."""
    directory = tmp_path / "state"
    directory.mkdir()
    store = directory / "manager.sqlite"
    store.write_bytes(b"a running manager's store")
    left = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "/opt/venv/bin/forehand"],
        stdin=subprocess.DEVNULL,
    )
    try:
        state = {"pids": {"manager": left.pid, "s1": 2**22 + 7}}
        (directory / "up.json").write_text(json.dumps(state), encoding="utf-8")
        command = [*FOREHAND, "up", "--app", "examples.cart.app:app", "--app-dir", str(REPO)]
        finished = subprocess.run(
            [*command, "--dir", str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        left.kill()
        left.wait()
    assert finished.returncode == 2, finished
    assert f"still run: manager (pid {left.pid});" in finished.stderr, finished.stderr
    assert "s1" not in finished.stderr
    assert store.read_bytes() == b"a running manager's store"
