"""The Redis baseline of bench_redis.py is a real one: state in redis-server, sticky routing,
and a dead app server's sessions re-routed with their state intact."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import time

import msgspec
from benchmarks.bench_redis import (
    ITEM,
    REQUEST_BYTES,
    AppClient,
    Baseline,
    Window,
    _cpu_s,
    _frame,
    _padding,
)

from forehand.runtime import run


def test_request_frames_are_the_same_size_on_both_sides() -> None:
    """The baseline's request frame is padded to the 100 bytes of forehand's REQUEST frame."""
    item = msgspec.msgpack.encode(ITEM)
    body = msgspec.msgpack.encode((100_000, bytes(16), "add", item, _padding(item)))
    assert len(_frame(body)) == REQUEST_BYTES


def test_baseline_keeps_state_in_redis_across_an_app_server_death(tmp_path: pathlib.Path) -> None:
    """Adds through the sticky app server accumulate in Redis; after SIGKILL of that app server
    the session is routed to another one, which continues from the state in Redis."""

    async def scenario() -> None:
        baseline = Baseline(tmp_path)
        try:
            await baseline.start()
            client = AppClient(baseline.addresses, baseline.certs_dir)
            await client.start()
            session_id = os.urandom(16)
            item = msgspec.msgpack.encode(ITEM)
            answers = [await client.add(session_id, item) for _ in range(3)]
            first = answers[0][0]
            assert {node for node, _ in answers} == {first}, "sticky: one app server"
            assert [msgspec.msgpack.decode(total) for _, total in answers] == [1, 2, 3]
            baseline.kill(first)
            # The connection's loss is seen by its reader task; wait until it dropped the node.
            for _ in range(200):
                if first not in client.writers:
                    break
                await asyncio.sleep(0.01)
            node, total = await client.add(session_id, item)
            assert node != first
            assert msgspec.msgpack.decode(total) == 4
            await client.close()
        finally:
            baseline.stop()
        assert all(process.poll() is not None for process in baseline.processes.values())

    run(scenario())


def test_cpu_accounting_counts_each_process_and_this_one() -> None:
    """A window's CPU seconds come from /proc for each named process and from this process
    (the load generator); a process that spins shows its work, a missing one is left out."""
    spinner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.3\n"
            "while time.process_time() < end: pass\ntime.sleep(30)",
        ]
    )
    try:
        before = _cpu_s({"spinner": spinner.pid, "gone": 2**22 + 7})
        deadline_s = time.monotonic() + 20
        while _cpu_s({"spinner": spinner.pid})["spinner"] - before["spinner"] < 0.25:
            assert time.monotonic() < deadline_s, "the spinner used no CPU"
            time.sleep(0.05)
        sum(range(2_000_000))
        after = _cpu_s({"spinner": spinner.pid})
    finally:
        spinner.kill()
        spinner.wait()
    assert "gone" not in before
    assert after["load"] > before["load"]
    window = Window(calls=10, seconds=2.0, cpu_s={"a": 0.001, "load": 0.001})
    assert (window.throughput(), window.cpu_us_per_request()) == (5.0, 200.0)
