"""NAB-format loading and the predict-eval pipeline on small data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from forehand.errors import ConfigError
from forehand.predict_io import NAB_MODELS, load_nab, nab_report, print_report, print_targets

S = 1_000_000
SHARED_NAB = Path(__file__).resolve().parents[3] / "shared" / "data" / "nab"
"""Real NAB data (numenta/NAB, realAWSCloudwatch), kept outside the repository; see its README."""


def _write_nab(root: Path) -> None:
    (root / "series").mkdir(parents=True)
    (root / "labels").mkdir()
    lines = ["timestamp,value"]
    for minute in range(0, 3 * 24 * 60, 5):
        day, rest = divmod(minute, 24 * 60)
        hour, mins = divmod(rest, 60)
        bump = 40.0 if 2 * 24 * 60 + 600 <= minute <= 2 * 24 * 60 + 700 else 0.0
        ramp = (
            max(0.0, (minute - (2 * 24 * 60 + 500)) / 10)
            if bump == 0 and minute < 2 * 24 * 60 + 600
            else 0
        )
        value = 10.0 + math.sin(minute / 50) + bump + ramp
        lines.append(f"2014-02-{14 + day:02d} {hour:02d}:{mins:02d}:00,{value}")
    (root / "series" / "a.csv").write_text("\n".join(lines) + "\n")
    windows = {"series/a.csv": [["2014-02-16 09:00:00.000000", "2014-02-16 11:40:00.000000"]]}
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))


def test_load_nab_reads_series_and_windows(tmp_path: Path) -> None:
    """Timestamps become microseconds, windows become events with their onset in the middle."""
    _write_nab(tmp_path)
    data = load_nab(tmp_path)
    assert list(data.series) == ["series/a.csv"] and data.tick_us == 300 * S
    (event,) = data.events
    assert event.onset_us - (event.onset_us // S) * S == 0
    assert event.end_us - event.onset_us == 80 * 60 * S
    start = load_nab(tmp_path, onset="start").events[0]
    assert event.onset_us - start.onset_us == 80 * 60 * S
    with pytest.raises(ConfigError):
        load_nab(tmp_path, onset="end")
    with pytest.raises(ConfigError):
        load_nab(tmp_path / "series")


def test_nab_report_runs_end_to_end(tmp_path: Path) -> None:
    """Every model is evaluated and printed, with the rule baseline and the floor beside it."""
    _write_nab(tmp_path)
    console = Console(width=200, record=True)
    report = nab_report(
        tmp_path, horizon_us=3_600 * S, lead_us=300 * S, seed=1, onset="middle", console=console
    )
    assert {model.model for model in report.models} == set(NAB_MODELS)
    print_report("NAB", report, console=console)
    print_targets(None, report, console=console)
    text = console.export_text()
    assert "random floor" in text and "rule recall" in text and "NAB at 1 alarms/day" in text


@pytest.mark.skipif(not SHARED_NAB.is_dir(), reason="shared NAB data not present")
def test_shared_nab_data_loads() -> None:
    """The seventeen AWS CloudWatch series and their windows parse (data: ../shared/data/nab)."""
    data = load_nab(SHARED_NAB)
    assert len(data.series) == 17 and data.tick_us == 300 * S
    assert len(data.events) >= 25
