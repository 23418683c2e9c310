"""`forehand.runtime.loop`: uvloop when available, and no start under `python -O`."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import uvloop

from forehand.runtime.loop import loop_factory, run, uvloop_available


def test_run_uses_uvloop() -> None:
    """run() drives its coroutine on a uvloop loop, or on asyncio's when asked."""

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    assert uvloop_available()
    assert loop_factory() is uvloop.new_event_loop
    assert issubclass(run(loop_type()), uvloop.Loop)
    assert not issubclass(run(loop_type(), use_uvloop=False), uvloop.Loop)


def test_runtime_refuses_to_start_under_optimize() -> None:
    """Under python -O both run() and the transports refuse to start, with a clear message."""
    script = (
        "import sys\n"
        "from forehand.runtime import AssertionsDisabledError, run, TLSTransport, Credentials\n"
        "async def main(): pass\n"
        "for attempt in (lambda: run(main()), lambda: TLSTransport(Credentials.for_client('.'))):\n"
        "    try:\n"
        "        attempt()\n"
        "    except AssertionsDisabledError as error:\n"
        "        print('refused:', error)\n"
        "    else:\n"
        "        sys.exit('started')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-O", "-c", script], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("refused:") == 2
    assert "python -O" in completed.stdout
