"""NAB evaluated by two folds of series: fold assignment, selection on one fold only, pooling."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from forehand.cli import app
from forehand.errors import ConfigError
from forehand.predict import EntitySeries, EvaluationConfig, LabelledEvent, ThresholdMode, evaluate
from forehand.predict._evaluation import (
    FoldReport,
    brier_skill_score,
    evaluate_folds,
    random_floor,
)
from forehand.predict_io import NAB_DEFAULT_FOLDS, _nab_checks, hash_fold, load_nab, nab_folds

S = 1_000_000
TICK_US = 300 * S
H, L = 3_600 * S, 300 * S
WIDE = {"COLUMNS": "240", "NO_COLOR": "1"}
SHARED_NAB = Path(__file__).resolve().parents[3] / "shared" / "data" / "nab"
"""Real NAB data (numenta/NAB, realAWSCloudwatch), kept outside the repository; see its README."""
DEFAULT_KEYS = [
    f"realAWSCloudwatch/{name}.csv" for names in NAB_DEFAULT_FOLDS.values() for name in names
]


def _sha_fold(name: str) -> str:
    """The documented hash rule, computed independently of the code under test."""
    return "A" if hashlib.sha256(name.encode()).digest()[0] % 2 == 0 else "B"


# alpha, beta and gamma hash to fold A; delta, cpu_a and cpu_b to fold B.
HASH_NAMES = ["alpha", "beta", "gamma", "delta", "cpu_a", "cpu_b"]


def test_default_folds_apply_to_the_realawscloudwatch_set() -> None:
    """The 17 listed series get their listed fold; an extra series gets the hash rule; with a
    listed series missing, every series gets the hash rule."""
    folds = nab_folds(DEFAULT_KEYS)
    assert "default" in folds.rule
    for fold, names in NAB_DEFAULT_FOLDS.items():
        assert sorted(folds.folds[fold]) == sorted(f"realAWSCloudwatch/{n}.csv" for n in names)
    extra = nab_folds([*DEFAULT_KEYS, "other/delta.csv"])
    assert "other/delta.csv" in extra.folds["B"] and "hash" in extra.rule
    partial = nab_folds(DEFAULT_KEYS[1:])
    assert "hash" in partial.rule
    for key in DEFAULT_KEYS[1:]:
        name = key.removeprefix("realAWSCloudwatch/").removesuffix(".csv")
        assert key in partial.folds[_sha_fold(name)]


def test_hash_rule_is_deterministic_and_total() -> None:
    """Every series lands in exactly one fold, the one SHA-256 of its file name says, whatever
    the order or the other series of the directory."""
    keys = [f"data/{name}.csv" for name in HASH_NAMES]
    assert [hash_fold(name) for name in HASH_NAMES] == [_sha_fold(name) for name in HASH_NAMES]
    assert [hash_fold(name) for name in HASH_NAMES] == ["A", "A", "A", "B", "B", "B"]
    folds = nab_folds(keys)
    members = Counter(key for fold in folds.folds.values() for key in fold)
    assert set(members) == set(keys) and set(members.values()) == {1}
    shuffled = list(keys)
    random.Random(3).shuffle(shuffled)
    assert nab_folds(shuffled) == folds
    fewer = nab_folds(keys[1:])
    for fold in ("A", "B"):
        assert set(fewer.folds[fold]) == set(folds.folds[fold]) - {keys[0]}
    with pytest.raises(ConfigError, match=r"fold B is empty.*--nab-folds"):
        nab_folds(keys[:3])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"A": ["alpha", "nope"], "B": ["delta"]}, "names 'nope', not a series"),
        ({"A": ["alpha", "delta"], "B": ["delta", "beta"]}, "'delta' is in both folds"),
        ({"A": ["alpha", "alpha"], "B": ["delta", "beta"]}, "'alpha' is twice in fold A"),
        ({"A": [], "B": ["alpha", "beta", "delta"]}, "fold A is empty"),
        ({"A": ["alpha"], "B": ["delta"]}, "in neither fold: beta"),
        ({"A": ["alpha", "beta"], "B": ["delta"], "C": []}, "keys exactly 'A' and 'B'"),
        ({"A": "alpha", "B": ["beta", "delta"]}, "must be a list of series names"),
        ([["alpha"], ["beta"]], "keys exactly 'A' and 'B'"),
    ],
)
def test_folds_file_is_validated(tmp_path: Path, content: object, message: str) -> None:
    """A folds file that names an unknown series, puts one in both folds or twice, leaves a fold
    empty or a series out, or has the wrong shape, is refused with a clear error."""
    path = tmp_path / "folds.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        nab_folds(["s/alpha.csv", "s/beta.csv", "s/delta.csv"], folds_path=path)


def test_folds_file_overrides_the_rules(tmp_path: Path) -> None:
    """A valid folds file decides every series' fold (names with or without .csv); a file that
    cannot be parsed is a clear error."""
    path = tmp_path / "folds.json"
    path.write_text(json.dumps({"A": ["delta.csv"], "B": ["alpha", "beta"]}))
    folds = nab_folds(["s/alpha.csv", "s/beta.csv", "s/delta.csv"], folds_path=path)
    assert folds.folds == {"A": ("s/delta.csv",), "B": ("s/alpha.csv", "s/beta.csv")}
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read folds file"):
        nab_folds(["s/alpha.csv"], folds_path=path)


@pytest.mark.skipif(not SHARED_NAB.is_dir(), reason="shared NAB data not present")
def test_shared_nab_data_gets_the_default_folds() -> None:
    """The 17 AWS CloudWatch series (data: ../shared/data/nab) split 8 / 9 by the fixed list."""
    folds = nab_folds(load_nab(SHARED_NAB).series)
    assert "default" in folds.rule and "hash" not in folds.rule
    assert [len(folds.folds["A"]), len(folds.folds["B"])] == [8, 9]


def _series(seed: int) -> tuple[list[EntitySeries], list[LabelledEvent]]:
    """Six entities over four days: a noisy head, one that rises before each onset, and events
    both in and after the warm-up."""
    rng = np.random.default_rng(seed)
    times = np.arange(0, 4 * 86_400 * S, TICK_US, dtype=np.int64)
    series, events = [], []
    for index, name in enumerate(HASH_NAMES):
        onsets = [int(times[0]) + (10 + 4 * index + 20 * k) * 3_600 * S for k in range(4)]
        own = [
            LabelledEvent(entity=name, onset_us=onset, end_us=onset + 1_800 * S, kind="nab")
            for onset in onsets
        ]
        events.extend(own)
        signal = rng.uniform(0.0, 0.3, len(times))
        for onset in onsets:
            signal[(times >= onset - 40 * 60 * S) & (times < onset)] += 0.5
        scores = {"noise": rng.uniform(0.0, 1.0, len(times)), "rule": signal * 0.9, "good": signal}
        series.append(EntitySeries(entity=name, times_us=times, scores=scores))
    return series, events


def _folds() -> dict[str, tuple[str, ...]]:
    return {"A": tuple(HASH_NAMES[:3]), "B": tuple(HASH_NAMES[3:])}


def _thresholds(report: FoldReport, selecting: str) -> dict[str, list[float]]:
    (direction,) = [d for d in report.directions if d.selecting == selecting]
    return {name: [o.threshold for o in outcomes] for name, outcomes in direction.outcomes.items()}


@pytest.mark.parametrize("mode", [ThresholdMode.ALARMS, ThresholdMode.FALSE_ALARMS])
def test_thresholds_come_only_from_the_selecting_fold(mode: ThresholdMode) -> None:
    """Changing fold B's labels and scores leaves every threshold and the primary chosen on fold A
    as they were; fold B's own choices move (so the comparison can fail)."""
    config = EvaluationConfig(horizon_us=H, lead_us=L, threshold_mode=mode, after_breach_us=0)
    series, events = _series(1)
    first = evaluate_folds(series, events, config, folds=_folds(), default="good")
    fold_b = set(HASH_NAMES[3:])
    moved = [
        event
        if event.entity not in fold_b
        else LabelledEvent(
            entity=event.entity,
            onset_us=event.onset_us + 5 * 3_600 * S,
            end_us=event.end_us + 5 * 3_600 * S,
            kind="nab",
        )
        for event in events
    ]
    rng = np.random.default_rng(9)
    changed = [
        entry
        if entry.entity not in fold_b
        else EntitySeries(
            entity=entry.entity,
            times_us=entry.times_us,
            scores={name: rng.uniform(0.0, 1.0, len(entry.times_us)) for name in entry.scores},
        )
        for entry in series
    ]
    second = evaluate_folds(changed, moved, config, folds=_folds(), default="good")
    assert _thresholds(first, "A") == _thresholds(second, "A")
    assert first.directions[0].primary == second.directions[0].primary == "good"
    assert _thresholds(first, "B") != _thresholds(second, "B")


def test_pooled_counts_equal_the_sum_of_the_two_directions() -> None:
    """Pooled events, alarms and leads are the sums of A -> B and B -> A; every event after the
    warm-up is tested exactly once (as many as the time split's validation and test hold); the
    floor is at the pooled alarm rate and the Brier skill over both folds' ticks."""
    config = EvaluationConfig(
        horizon_us=H, lead_us=L, threshold_mode=ThresholdMode.ALARMS, after_breach_us=0
    )
    series, events = _series(2)
    report = evaluate_folds(series, events, config, folds=_folds(), default="good")
    time_split = evaluate(series, events, config)
    warmup_events = sum(1 for event in events if event.onset_us < int(series[0].times_us[-1] * 0.4))
    assert 0 < warmup_events < len(events)
    for model in ("noise", "rule", "good", None):
        pooled = report.pooled(model)
        names = [d.primary if model is None else model for d in report.directions]
        parts = [d.outcomes[name] for d, name in zip(report.directions, names, strict=True)]
        for index, row in enumerate(pooled.rows):
            first, second = parts[0][index], parts[1][index]
            assert row.events == first.events + second.events == len(events) - warmup_events
            predicted = round(row.recall * row.events)
            assert predicted == first.predicted + second.predicted
            alarms = first.alarms + second.alarms
            span_s = (first.test_span_us + second.test_span_us) / S
            assert row.random_floor == pytest.approx(
                random_floor(alarms / span_s, horizon_us=H, lead_us=L)
            )
            assert row.false_alarms_per_day == pytest.approx(
                (first.false_alarms + second.false_alarms) / (span_s / 86_400)
            )
            assert math.isnan(row.threshold)
        probabilities = np.concatenate(
            [d.probabilities[name] for d, name in zip(report.directions, names, strict=True)]
        )
        labels = np.concatenate([d.labels for d in report.directions])
        assert pooled.brier_skill == pytest.approx(brier_skill_score(probabilities, labels))
    tested = sum(direction.report.test_events["all"] for direction in report.directions)
    assert (
        tested
        == len(events) - warmup_events
        == time_split.test_events["all"]
        + sum(
            1
            for event in events
            if int(series[0].times_us[-1] * 0.4)
            <= event.onset_us
            < int(series[0].times_us[-1] * 0.6)
        )
    )
    assert report.pooled().model == "good"


def test_the_rule_is_scored_like_every_candidate() -> None:
    """A candidate that is a copy of the rule's scores gets the rule's thresholds, alarms and
    recall in both directions and pooled (same alarm trigger, same threshold choice), and as the
    primary it ties the rule, which the NAB target does not count as better."""
    config = EvaluationConfig(
        horizon_us=H, lead_us=L, threshold_mode=ThresholdMode.ALARMS, after_breach_us=0
    )
    series, events = _series(4)
    copied = [
        EntitySeries(
            entity=entry.entity,
            times_us=entry.times_us,
            scores={"rule": entry.scores["rule"], "copy": entry.scores["rule"].copy()},
        )
        for entry in series
    ]
    report = evaluate_folds(copied, events, config, folds=_folds(), default="copy")
    for direction in report.directions:
        assert direction.primary == "copy"
        assert direction.outcomes["copy"] == direction.outcomes["rule"]
        assert direction.report.model("copy").rows == direction.report.model("rule").rows
    pooled, rule = report.pooled(), report.pooled("rule")
    assert pooled.rows == rule.rows and pooled.brier_skill == rule.brier_skill
    assert any(row.recall > 0 for row in rule.rows)
    checks = _nab_checks(pooled, rule, how="copy")
    assert len(checks) == len(config.false_alarms_per_day)
    assert not any(met for _, _, met in checks)


def test_fold_evaluation_refuses_bad_folds() -> None:
    """Folds that overlap, leave an entity out, name an unknown one or are empty are refused."""
    config = EvaluationConfig(horizon_us=H, lead_us=L)
    series, events = _series(3)
    bad = [
        {"A": HASH_NAMES[:4], "B": HASH_NAMES[3:]},
        {"A": HASH_NAMES[:2], "B": HASH_NAMES[3:]},
        {"A": [*HASH_NAMES[:3], "ghost"], "B": HASH_NAMES[3:]},
        {"A": [], "B": HASH_NAMES},
        {"A": HASH_NAMES[:3]},
    ]
    for folds in bad:
        with pytest.raises(ConfigError):
            evaluate_folds(series, events, config, folds=folds, default="good")


def _write_nab(root: Path, names: list[str]) -> None:
    """Three days of 5-minute samples per series, one labelled window on the last day each."""
    (root / "series").mkdir(parents=True)
    (root / "labels").mkdir()
    windows = {}
    for index, name in enumerate(names):
        lines = ["timestamp,value"]
        for minute in range(0, 3 * 24 * 60, 5):
            day, rest = divmod(minute, 24 * 60)
            hour, mins = divmod(rest, 60)
            anomaly = 2 * 24 * 60 + 300 + 120 * index
            bump = 30.0 if anomaly <= minute <= anomaly + 90 else 0.0
            value = 10.0 + index + math.sin(minute / 50) + bump
            lines.append(f"2014-02-{14 + day:02d} {hour:02d}:{mins:02d}:00,{value}")
        (root / "series" / f"{name}.csv").write_text("\n".join(lines) + "\n")
        start_hour, start_minute = divmod(300 + 120 * index - 40, 60)
        end_hour, end_minute = divmod(300 + 120 * index + 130, 60)
        windows[f"series/{name}.csv"] = [
            [
                f"2014-02-16 {start_hour:02d}:{start_minute:02d}:00.000000",
                f"2014-02-16 {end_hour:02d}:{end_minute:02d}:00.000000",
            ]
        ]
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))


def test_cli_prints_the_fold_table(tmp_path: Path) -> None:
    """`forehand predict-eval --nab DIR` prints the per-budget validation recall of the time
    split, the two-fold table (both directions and pooled, with the rule and the floor) and
    judges the NAB target on the pooled folds (a series without rows left out of its fold); a bad
    --nab-folds file exits 2 before the replay."""
    _write_nab(tmp_path, ["alpha", "beta", "delta", "cpu_a"])
    (tmp_path / "series" / "gamma.csv").write_text("timestamp,value\n")  # no rows: never scored
    arguments = ["predict-eval", "--no-synthetic", "--nab", str(tmp_path)]
    arguments += ["--horizon-s", "3600", "--lead-s", "300"]
    result = CliRunner().invoke(app, arguments, env=WIDE)
    assert result.exit_code == 0, result.output
    output = result.output
    assert "recall on validation" in output
    assert "two folds of series (hash rule" in output
    assert "fold A: 2 series" in output and "fold B: 2 series" in output
    for label in ("A -> B", "B -> A", "pooled"):
        assert label in output, label
    assert "every head, both directions pooled" in output
    assert "two folds pooled, primary chosen on the selecting fold" in output
    assert "(time split, primary chosen on validation)" in output
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"A": ["alpha", "ghost"], "B": ["beta", "delta", "cpu_a"]}))
    bad = CliRunner().invoke(app, [*arguments, "--nab-folds", str(folds)], env=WIDE)
    assert bad.exit_code == 2 and "names 'ghost', not a series" in bad.output
    alone = CliRunner().invoke(app, ["predict-eval", "--nab-folds", str(folds)], env=WIDE)
    assert alone.exit_code == 2 and "--nab-folds needs --nab" in alone.output
