"""Benchmark tests import `benchmarks._common` and friends, as the benchmarks do: from the
repository root."""

from __future__ import annotations

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
