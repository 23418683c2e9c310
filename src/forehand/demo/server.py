"""`python -m forehand.demo.server --config FILE`: a Forehand server with the demo's fault hook.

It is the process `forehand server --config FILE` runs (the same configuration file, the same
`run_server`), plus one thing the demo needs to degrade a server for real: SIGUSR1 starts a
`CpuBurner` inside the process (its ramp set by the `--burn-*` options) and SIGUSR2 stops it.
The hook lives here rather than in `forehand server`, so production servers carry no way to be
slowed down by a signal.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from forehand.demo._burner import BurnerConfig, CpuBurner
from forehand.errors import ConfigError

__all__ = ["main"]

CONFIG_ERROR_EXIT = 2
"""Exit status when the configuration is invalid (as `forehand server`)."""


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = BurnerConfig()
    parser = argparse.ArgumentParser(prog="python -m forehand.demo.server", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="the server's TOML file")
    parser.add_argument("--burn-ramp-ms", type=int, default=defaults.ramp_ms)
    parser.add_argument("--burn-duty-peak", type=float, default=defaults.duty_peak)
    parser.add_argument("--burn-chunk-ms-peak", type=float, default=defaults.chunk_ms_peak)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; SIGUSR1 and SIGUSR2 start and stop the burner."""
    from forehand.runtime.config import load_server_config
    from forehand.runtime.loop import run
    from forehand.runtime.process import configure_logging, run_server

    arguments = _arguments(argv)
    try:
        config = load_server_config(arguments.config)
        burner = CpuBurner(
            BurnerConfig(
                ramp_ms=arguments.burn_ramp_ms,
                duty_peak=arguments.burn_duty_peak,
                chunk_ms_peak=arguments.burn_chunk_ms_peak,
            )
        )
    except ConfigError as error:
        print(f"forehand.demo.server: {error}", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    configure_logging(config.log_level)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, burner.start)
        loop.add_signal_handler(signal.SIGUSR2, burner.stop)
        try:
            await run_server(config)
        finally:
            burner.stop()

    try:
        run(serve())
    except ConfigError as error:
        print(f"forehand.demo.server: {error}", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
