"""A real Forehand cluster for runtime tests: `forehand manager` and `forehand server` processes.

Every process is a subprocess of the test, on 127.0.0.1 with ports the system picks (each writes
its `host:port` to a ready file), with certificates and the cluster key file in a temporary
directory. `Cluster.stop()` stops what it started, by pid, and waits for each process; timeouts
in this module only catch hangs, they are not timing claims. Timers are shortened (heartbeats
every 100 ms, death after 1 s of silence, a 1 s backup period) so that failover and handoff
tests finish quickly, and the load-based risk policy is switched off so that only the tests
move parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import forehand
from forehand.core import ClientConfig
from forehand.runtime import make_cluster_certs, run
from forehand.runtime.admin import AdminReply, AdminRequest, Status, admin_request
from forehand.runtime.keys import CLUSTER_KEYS_FILE, add_cluster_key

__all__ = [
    "HANG_TIMEOUT_S",
    "SERVERS",
    "COUNTER_APP",
    "CartLoad",
    "Cluster",
    "eventually",
    "make_certs",
    "run_async",
]

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
FOREHAND = [sys.executable, "-c", "from forehand.cli import main; main()"]
SERVERS = ("s1", "s2", "s3")
HANG_TIMEOUT_S = 60.0
"""A test still running after this long is hung; the bound is not a timing claim."""
START_TIMEOUT_S = 30.0
"""A process that has not written its ready file after this long failed to start."""
STOP_TIMEOUT_S = 10.0
"""A process that has not exited this long after SIGINT is killed."""

MANAGER_SETTINGS = (
    "core.heartbeat_interval_ms=100",
    "core.suspect_timeout_ms=500",
    "core.failure_timeout_ms=1000",
    "core.failover_prepare_timeout_ms=300",
    "core.handoff_deadline_ms=10000",
    "core.handoff_backup_report_timeout_ms=5000",
    "core.overload_threshold=100.0",
)
SERVER_SETTINGS = (
    "core.heartbeat_interval_ms=100",
    "core.backup_period_ms=1000",
    "core.handoff_deadline_ms=10000",
)


def run_async(coroutine: Coroutine[Any, Any, T], *, timeout_s: float = HANG_TIMEOUT_S) -> T:
    """Run `coroutine` on a new loop (uvloop) under a hang guard."""

    async def guarded() -> T:
        async with asyncio.timeout(timeout_s):
            return await coroutine

    return run(guarded())


async def eventually(
    check: Callable[[], Awaitable[bool] | bool],
    *,
    what: str,
    timeout_s: float = 30.0,
    state: Callable[[], object] | None = None,
) -> None:
    """Poll `check` (sync or async) until it is true; fail with `what` (and `state()`) if it
    never is."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            shown = "" if state is None else f"; state: {state()!r}"
            raise AssertionError(f"never happened: {what}{shown}")
        await asyncio.sleep(0.05)


class CartLoad:
    """Writers that add one unit to a session's cart in a loop, each recording the total its
    acknowledged add answered. Used as `async with CartLoad(session, writers=3) as load:`; on
    leaving, the writers stop and any call that failed fails the test."""

    def __init__(self, session: forehand.Session, *, writers: int) -> None:
        self.session = session
        self.results: list[int] = []
        """The totals acknowledged adds answered, in the order the answers came."""
        self._writers = writers
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> CartLoad:
        self._tasks = [asyncio.create_task(self._write(n)) for n in range(self._writers)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        if exc_info[0] is not None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            return
        await asyncio.gather(*self._tasks)

    async def _write(self, number: int) -> None:
        item = {"sku": f"w{number}", "quantity": 1}
        while not self._stop.is_set():
            self.results.append(await self.session.call("cart", "add", item))

    async def wait_for(self, count: int, *, what: str) -> None:
        """Wait until `count` more adds were acknowledged."""
        target = len(self.results) + count
        await eventually(lambda: len(self.results) >= target, what=what)

    async def check_exactly_once(self) -> None:
        """Every acknowledged add saw its own total: none ran twice, none was lost, and the
        cart holds exactly the acknowledged units."""
        results = self.results
        assert sorted(results) == list(range(1, len(results) + 1))
        listing: dict[str, int] = await self.session.call(
            "cart", "list", result_type=dict[str, int]
        )
        assert sum(listing.values()) == len(results)


COUNTER_APP = """
import time

import msgspec

import forehand

app = forehand.App("counter")


class Counter(msgspec.Struct):
    value: int = 0


app.part("counter", initial=Counter, durability="replicated")


@app.handler("counter", "add")
def add(counter: Counter, amount: int) -> tuple[Counter, int]:
    counter.value += amount
    return counter, counter.value
"""
"""The source of a one-part app (`counter.add`) that tests write into a file and extend."""


def make_certs(directory: Path) -> Path:
    """A cluster CA, certificates for the manager, SERVERS and admin, and a key file."""
    make_cluster_certs(directory, ("manager", *SERVERS, "admin", "s9"), days=2)
    add_cluster_key(directory / CLUSTER_KEYS_FILE)
    return directory


class Cluster:
    """One manager and its servers as subprocesses (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        certs_dir: Path,
        transport: str,
        servers: tuple[str, ...] = SERVERS,
        server_settings: tuple[str, ...] = (),
        manager_settings: tuple[str, ...] = (),
        log_level: str = "info",
        app: str = "examples.cart.app:app",
        app_dir: Path = REPO,
    ) -> None:
        self.directory = directory
        self.app, self.app_dir = app, app_dir
        self.certs_dir = certs_dir
        self.transport = transport
        self.server_ids = servers
        self.server_settings = SERVER_SETTINGS + server_settings
        self.manager_settings = MANAGER_SETTINGS + manager_settings
        self.log_level = log_level
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.addresses: dict[str, str] = {}
        self.manager_address = ""

    # -- processes -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the manager, then every server; return once all are members of the map."""
        try:
            self._launch("manager", self._manager_command())
            self.manager_address = self._wait_ready("manager")
            for server_id in self.server_ids:
                self._launch(server_id, self._server_command(server_id))
            for server_id in self.server_ids:
                self.addresses[server_id] = self._wait_ready(server_id)
            run_async(self.wait_active(self.server_ids))
        except BaseException:
            self.stop()
            raise

    def _manager_command(self) -> list[str]:
        command = [
            *FOREHAND,
            "manager",
            "--certs-dir",
            str(self.certs_dir),
            "--listen",
            "127.0.0.1:0",
            "--transport",
            self.transport,
            "--store-path",
            str(self.directory / "manager.sqlite"),
            "--ready-file",
            str(self.directory / "manager.ready"),
            "--log-level",
            self.log_level,
        ]
        for setting in self.manager_settings:
            command += ["--set", setting]
        return command

    def _server_command(self, server_id: str) -> list[str]:
        command = [
            *FOREHAND,
            "server",
            "--server-id",
            server_id,
            "--app",
            self.app,
            "--app-dir",
            str(self.app_dir),
            "--certs-dir",
            str(self.certs_dir),
            "--listen",
            "127.0.0.1:0",
            "--transport",
            self.transport,
            "--manager",
            self.manager_address,
            "--ready-file",
            str(self.directory / f"{server_id}.ready"),
            "--log-level",
            self.log_level,
        ]
        for setting in self.server_settings:
            command += ["--set", setting]
        return command

    def _launch(self, name: str, command: list[str]) -> None:
        (self.directory / f"{name}.ready").unlink(missing_ok=True)
        log = (self.directory / f"{name}.log").open("ab")
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=self.directory
        )
        log.close()

    def _wait_ready(self, name: str) -> str:
        ready = self.directory / f"{name}.ready"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            process = self.processes[name]
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{self.log(name)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start:\n{self.log(name)}")
            time.sleep(0.05)
        return ready.read_text().strip()

    def restart_manager(self) -> None:
        """Start the manager again on its address, with its store (after it stopped)."""
        command = self._manager_command()
        command[command.index("127.0.0.1:0")] = self.manager_address
        self._launch("manager", command)
        assert self._wait_ready("manager") == self.manager_address

    def log(self, name: str) -> str:
        """The output of process `name` so far."""
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def send_signal(self, name: str, number: signal.Signals) -> None:
        """Send a signal to one process (SIGKILL, SIGSTOP, SIGCONT, ...)."""
        self.processes[name].send_signal(number)

    def wait_exit(self, name: str) -> int:
        """Wait for process `name` to exit; its status."""
        return self.processes[name].wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Stop every process this cluster started, by pid, and wait for each: SIGINT, which
        stops a server at once (SIGTERM would first drain it onto servers stopping too)."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
                    process.send_signal(signal.SIGINT)
        for process in self.processes.values():
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # -- talking to it ---------------------------------------------------------------------

    async def admin(self, request: AdminRequest) -> AdminReply:
        """Send an operator command to the manager with the admin certificate."""
        return await admin_request(self.manager_address, request, certs_dir=self.certs_dir)

    async def wait_active(self, servers: tuple[str, ...]) -> None:
        """Wait until every server of `servers` is alive and active in the map."""

        async def all_active() -> bool:
            reply = await self.admin(Status())
            states = {s.server_id: (s.member_state, s.map_state) for s in reply.servers}
            return all(states.get(server) == ("alive", "active") for server in servers)

        await eventually(all_active, what=f"servers {servers} active")

    def connect(self, **options: Any) -> forehand.Client:
        """A client of this cluster (fast pings, so a stopped server is noticed in 1 s)."""
        config = options.pop(
            "config", ClientConfig(ping_interval_ms=200, request_timeout_ms=20_000)
        )
        return forehand.connect(
            self.manager_address,
            ca=self.certs_dir / "ca.pem",
            transport=self.transport,
            config=config,
            **options,
        )
