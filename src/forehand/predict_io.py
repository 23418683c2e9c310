"""The I/O side of prediction: NAB-format directories in, `forehand predict-eval` tables out.

`forehand.predict` is a sans-IO core; this module reads files, drives the predictor over a
synthetic fleet or a NAB-format directory (CSV `timestamp,value` files plus a windows JSON), and
prints the evaluation with rich.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from forehand.errors import ConfigError
from forehand.predict import (
    GRADUAL_FAULTS,
    SUDDEN_FAULTS,
    EvaluationConfig,
    EvaluationReport,
    FeatureConfig,
    LabelConfig,
    LabelledEvent,
    MetricSpec,
    ModelReport,
    OnlinePredictor,
    PolicyConfig,
    PredictorConfig,
    RecallRow,
    Sample,
    ServerSample,
    SyntheticConfig,
    SyntheticFleet,
    ThresholdMode,
    evaluate,
    replay,
)
from forehand.predict._evaluation import FoldReport, evaluate_folds

__all__ = [
    "NAB_DEFAULT_FOLDS",
    "NabData",
    "NabEvaluation",
    "NabFolds",
    "hash_fold",
    "load_nab",
    "nab_evaluation",
    "nab_folds",
    "nab_report",
    "print_fold_report",
    "print_report",
    "synthetic_report",
]

S = 1_000_000
HOUR_US = 3_600 * S
DAY_US = 24 * HOUR_US
PRIMARY_MODEL = "logistic"
NAB_MODELS = (
    "logistic",
    "rule",
    "tree",
    "logistic_balanced",
    "logistic_abs",
    "blend_max_logistic",
    "blend_mean_logistic",
    "blend_max_tree",
    "zscore",
    "robust_z",
    "robust_zscore",
    "blend_max_robust_z",
    "blend_mean_robust_z",
)
"""The heads run on NAB: every candidate for its primary (chosen on validation), all reported."""
NAB_DEFAULT_FOLDS: dict[str, tuple[str, ...]] = {
    "A": (
        "ec2_cpu_utilization_24ae8d",
        "ec2_cpu_utilization_5f5533",
        "ec2_cpu_utilization_825cc2",
        "ec2_cpu_utilization_c6585a",
        "rds_cpu_utilization_cc0c53",
        "ec2_disk_write_bytes_c0d644",
        "iio_us-east-1_i-a2eb1cd9_NetworkIn",
        "elb_request_count_8c0756",
    ),
    "B": (
        "ec2_cpu_utilization_53ea38",
        "ec2_cpu_utilization_77c1ca",
        "ec2_cpu_utilization_ac20cd",
        "ec2_cpu_utilization_fe7f93",
        "rds_cpu_utilization_e47b3b",
        "ec2_disk_write_bytes_1ef3de",
        "ec2_network_in_257a54",
        "ec2_network_in_5abac7",
        "grok_asg_anomaly",
    ),
}
"""The two folds of NAB's realAWSCloudwatch series (file names without .csv), stratified by the
kind of metric and fixed before any result of them: each fold selects the primary and the
thresholds for the other. They apply when every listed series is in the directory."""
FOLD_NAMES = ("A", "B")
HANDOFF_S = 0.024
"""The slowest handoff (HANDOFF to RESUME_OK) the demo measured, 2.5 to 24 ms; the lead target
is three times it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NabData:
    """Series and labelled windows of a NAB-format directory."""

    series: dict[str, list[tuple[int, float]]]
    """File (relative to the data folder) -> (time_us, value) rows in time order."""
    events: list[LabelledEvent]
    """One event per window: onset at its middle (NAB centres windows on labels) or start."""
    tick_us: int
    """The most common sampling period."""


def _parse_time_us(text: str) -> int:
    moment = datetime.datetime.fromisoformat(text.strip()).replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * S)


def load_nab(directory: Path, *, onset: str = "middle") -> NabData:
    """Read every CSV under `directory` and the windows JSON under its `labels/` folder."""
    if onset not in ("middle", "start"):
        raise ConfigError(f"onset must be 'middle' or 'start', got {onset!r}")
    windows_files = sorted(directory.rglob("*windows*.json"))
    if not windows_files:
        raise ConfigError(f"no windows JSON under {directory}")
    windows: dict[str, list[list[str]]] = json.loads(windows_files[0].read_text())
    series: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.rglob("*.csv")):
        name = path.relative_to(directory).as_posix()
        with path.open(newline="") as handle:
            rows = [
                (_parse_time_us(row["timestamp"]), float(row["value"]))
                for row in csv.DictReader(handle)
            ]
        series[name] = sorted(rows)
    events = []
    for name, pairs in windows.items():
        if name not in series:
            continue
        for start_text, end_text in pairs:
            start_us, end_us = _parse_time_us(start_text), _parse_time_us(end_text)
            onset_us = (start_us + end_us) // 2 if onset == "middle" else start_us
            events.append(LabelledEvent(entity=name, onset_us=onset_us, end_us=end_us, kind="nab"))
    gaps = [rows[i + 1][0] - rows[i][0] for rows in series.values() for i in range(len(rows) - 1)]
    tick_us = max(set(gaps), key=gaps.count) if gaps else 300 * S
    return NabData(series=series, events=events, tick_us=tick_us)


def _nab_ticks(data: NabData) -> Iterator[tuple[int, list[Sample]]]:
    """All series merged in time order; a sample breaches between its window's onset and end."""
    by_time: dict[int, list[Sample]] = {}
    for name, rows in data.series.items():
        own = [event for event in data.events if event.entity == name]
        for time_us, value in rows:
            breached = any(event.onset_us <= time_us <= event.end_us for event in own)
            sample = ServerSample(server_id=name, values={"value": value}, breached=breached)
            by_time.setdefault(time_us, []).append(sample)
    for time_us in sorted(by_time):
        yield time_us, by_time[time_us]


def nab_predictor_config(*, horizon_us: int, lead_us: int, tick_us: int) -> PredictorConfig:
    """One unscaled metric, time scales stretched to the series' sampling period."""
    return PredictorConfig(
        metrics=(MetricSpec(name="value"),),
        features=FeatureConfig(
            ewma_time_constants_us=(3 * tick_us, 12 * tick_us, 72 * tick_us),
            baseline_time_constant_us=DAY_US,
            rtt_min_window_ticks=1,
        ),
        labels=LabelConfig(horizon_us=horizon_us, lead_us=lead_us, breach_clear_us=0),
        pending_ticks_max=horizon_us // tick_us + 8,
        calibration_labels_min=0,
    )


def nab_report(
    directory: Path, *, horizon_us: int, lead_us: int, seed: int, onset: str, console: Console
) -> EvaluationReport:
    """Run every model over a NAB directory and evaluate by time split, label-free thresholds."""
    return nab_evaluation(
        directory, horizon_us=horizon_us, lead_us=lead_us, seed=seed, onset=onset, console=console
    ).time_split


@dataclass(frozen=True, slots=True, kw_only=True)
class NabFolds:
    """Which fold each series of a NAB-format directory belongs to, and by which rule."""

    folds: dict[str, tuple[str, ...]]
    """Fold name ("A", "B") -> its series (keys of `NabData.series`)."""
    rule: str
    """How they were assigned: the default folds, the hash rule, or a folds file."""


def series_name(key: str) -> str:
    """The name folds use for a series: its file name without `.csv`."""
    return PurePosixPath(key).name.removesuffix(".csv")


def hash_fold(name: str) -> str:
    """The hash rule: fold "A" if the first byte of SHA-256 of the UTF-8 name is even, else "B".

    A function of the name alone, so adding a series to a directory moves no other series.
    """
    return FOLD_NAMES[hashlib.sha256(name.encode("utf-8")).digest()[0] % 2]


def nab_folds(series: Iterable[str], *, folds_path: Path | None = None) -> NabFolds:
    """Assign every series to exactly one of two folds.

    From `folds_path` (JSON `{"A": [names], "B": [names]}`) if given; else `NAB_DEFAULT_FOLDS`
    when every series it lists is present (any other series by the hash rule); else the hash
    rule for all. Raises `ConfigError` for a bad file or a fold left empty.
    """
    keys = sorted(series)
    names = {series_name(key) for key in keys}
    defaults = {name: fold for fold, listed in NAB_DEFAULT_FOLDS.items() for name in listed}
    if folds_path is not None:
        by_name = _read_folds(folds_path, names)
        rule = f"folds file {folds_path}"
    elif set(defaults) <= names:
        by_name = {name: defaults.get(name) or hash_fold(name) for name in names}
        extra = " (other series by the hash rule)" if names - set(defaults) else ""
        rule = f"default folds of realAWSCloudwatch{extra}"
    else:
        by_name = {name: hash_fold(name) for name in names}
        rule = "hash rule (fold A if the first byte of SHA-256 of the file name is even)"
    folds = {
        fold: tuple(key for key in keys if by_name[series_name(key)] == fold) for fold in FOLD_NAMES
    }
    for fold, members in folds.items():
        if not members:
            raise ConfigError(f"fold {fold} is empty under the {rule}; give --nab-folds FILE")
    return NabFolds(folds=folds, rule=rule)


def _read_folds(path: Path, names: set[str]) -> dict[str, str]:
    """A folds file, checked against the directory's series names: name -> fold."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read folds file {path}: {error}") from error
    if not isinstance(content, dict) or set(content) != set(FOLD_NAMES):
        raise ConfigError(f"{path}: expected a JSON object with keys exactly 'A' and 'B'")
    by_name: dict[str, str] = {}
    for fold in FOLD_NAMES:
        listed = content[fold]
        if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
            raise ConfigError(f"{path}: fold {fold} must be a list of series names")
        if not listed:
            raise ConfigError(f"{path}: fold {fold} is empty")
        for entry in listed:
            name = entry.removesuffix(".csv")
            if name not in names:
                raise ConfigError(
                    f"{path}: fold {fold} names {entry!r}, not a series of the directory "
                    f"(known: {', '.join(sorted(names))})"
                )
            if name in by_name:
                where = "twice in" if by_name[name] == fold else "in both folds, last in"
                raise ConfigError(f"{path}: series {name!r} is {where} fold {fold}")
            by_name[name] = fold
    missing = sorted(names - set(by_name))
    if missing:
        raise ConfigError(f"{path}: series in neither fold: {', '.join(missing)}")
    return by_name


@dataclass(frozen=True, slots=True, kw_only=True)
class NabEvaluation:
    """Both protocols over one replay of a NAB-format directory."""

    time_split: EvaluationReport
    """Each series split in time: warm-up, validation, test."""
    folds: FoldReport | None
    """Two folds of series, each selecting for the other (None if a fold would be empty)."""
    fold_rule: str
    """How the series were assigned to folds, or why there are no folds."""


def nab_evaluation(
    directory: Path,
    *,
    horizon_us: int,
    lead_us: int,
    seed: int,
    onset: str,
    console: Console,
    folds_path: Path | None = None,
) -> NabEvaluation:
    """Run every model once over a NAB directory; evaluate by time split and by two folds of
    series, both with label-free thresholds. A bad folds file fails before the replay."""
    data = load_nab(directory, onset=onset)
    assignment: NabFolds | None = None
    try:
        assignment = nab_folds(data.series, folds_path=folds_path)
        fold_rule = assignment.rule
    except ConfigError as error:
        if folds_path is not None:
            raise
        fold_rule = str(error)
    config = nab_predictor_config(horizon_us=horizon_us, lead_us=lead_us, tick_us=data.tick_us)
    predictor = OnlinePredictor(config=config, rng=random.Random(seed), models=NAB_MODELS)
    total = len({time_us for rows in data.series.values() for time_us, _ in rows})
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("NAB", total=total)
        series = replay(predictor, _nab_ticks(data), progress=lambda _: progress.advance(task))
    # NAB's labels are for sanity checks, not tuning: thresholds come from the alarm rate on the
    # validation part (or the selecting fold), which needs no label at all.
    evaluation = EvaluationConfig(
        horizon_us=horizon_us,
        lead_us=lead_us,
        threshold_mode=ThresholdMode.ALARMS,
        after_breach_us=0,
    )
    folds = None
    if assignment is not None:
        # A series without rows never reports, so it has no scores to select or test on.
        replayed = {entry.entity for entry in series}
        members = {
            fold: [key for key in keys if key in replayed]
            for fold, keys in assignment.folds.items()
        }
        try:
            folds = evaluate_folds(
                series, data.events, evaluation, folds=members, default=PRIMARY_MODEL
            )
        except ConfigError as error:
            fold_rule = f"{fold_rule}: {error}"
    return NabEvaluation(
        time_split=evaluate(series, data.events, evaluation), folds=folds, fold_rule=fold_rule
    )


def synthetic_report(
    *, servers: int, days: float, seed: int, console: Console, path_intermittency: bool = True
) -> EvaluationReport:
    """Run every model over a synthetic fleet and evaluate with false-alarm budgets
    (`path_intermittency` False: without the intermittency features of `FeatureConfig`)."""
    fleet_config = SyntheticConfig(servers=servers, duration_us=int(days * DAY_US))
    fleet = SyntheticFleet(config=fleet_config, rng=random.Random(seed))
    config = PredictorConfig(features=FeatureConfig(path_intermittency=path_intermittency))
    predictor = OnlinePredictor(config=config, rng=random.Random(seed + 1))
    total = fleet_config.duration_us // fleet_config.tick_us
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("synthetic fleet", total=total)
        series = replay(predictor, fleet.ticks(), progress=lambda _: progress.advance(task))
    groups = {
        "gradual": tuple(kind.value for kind in GRADUAL_FAULTS),
        "sudden": tuple(kind.value for kind in SUDDEN_FAULTS),
        **{kind.value: (kind.value,) for kind in GRADUAL_FAULTS + SUDDEN_FAULTS},
    }
    # Alarms as the trigger policy raises them: its threshold held on k of the last n ticks.
    policy = PolicyConfig()
    evaluation = EvaluationConfig(
        horizon_us=config.labels.horizon_us,
        lead_us=config.labels.lead_us,
        groups=groups,
        after_breach_us=config.labels.breach_clear_us,
        alarm_ticks_k=policy.trigger_ticks_k,
        alarm_window_n=policy.trigger_window_n,
    )
    return evaluate(series, fleet.events, evaluation)


def _number(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def print_report(
    title: str,
    report: EvaluationReport,
    *,
    console: Console,
    groups: Sequence[str] | None = None,
    budget_name: str = "FA/day",
) -> None:
    """One table row per model, group and budget; rule baseline and random floor beside each."""
    table = Table(
        title=f"{title}: {report.test_entity_days:.1f} entity-days of test, "
        f"thresholds from {report.validation_entity_days:.1f} of validation"
    )
    for column in (
        "model",
        "events",
        f"{budget_name} budget",
        "recall",
        "recall on validation",
        "random floor",
        "rule recall",
        "FA/day",
        "precision",
        "lead median s",
        "lead p10 s",
        "threshold",
    ):
        table.add_column(column, justify="left" if column in ("model", "events") else "right")
    rule = (
        {(row.group, row.budget_per_day): row for row in report.model("rule").rows}
        if any(model.model == "rule" for model in report.models)
        else {}
    )
    for model in report.models:
        for row in model.rows:
            if groups is not None and row.group not in groups:
                continue
            baseline = rule.get((row.group, row.budget_per_day))
            table.add_row(
                model.model,
                f"{row.group} ({row.events})",
                _number(row.budget_per_day, 1),
                _number(row.recall),
                _number(row.validation_recall),
                _number(row.random_floor, 3),
                "-" if baseline is None else _number(baseline.recall),
                _number(row.false_alarms_per_day),
                _number(row.precision),
                _number(row.lead_s_median, 0),
                _number(row.lead_s_p10, 0),
                _number(row.threshold, 3),
            )
    console.print(table)
    calibration = Table(title=f"{title}: calibration over the test ticks")
    for column in (
        "model",
        "Brier skill",
        "calibration error",
        "base rate",
        "Brier skill on validation",
        "recall on validation",
    ):
        calibration.add_column(column, justify="left" if column == "model" else "right")
    for model in report.models:
        calibration.add_row(
            model.model,
            _number(model.brier_skill, 3),
            _number(model.calibration_error, 4),
            _number(model.base_rate, 4),
            _number(model.validation_brier_skill, 3),
            _number(model.validation_recall),
        )
    console.print(calibration)


def print_fold_report(title: str, report: FoldReport, *, console: Console, rule: str) -> None:
    """Primary and thresholds chosen on one fold of series, tested on the other, both ways and
    pooled; beside each recall the rule's (its own thresholds, chosen the same way) and the
    random floor at the test alarm rate; then every head's pooled recall."""
    console.print(f"{title}, two folds of series ({rule}):")
    tested = {direction.testing: direction.report for direction in report.directions}
    for fold, members in report.folds.items():
        console.print(
            f"  fold {fold}: {len(members)} series, "
            f"{tested[fold].test_events['all']} windows after the warm-up, "
            f"{tested[fold].test_entity_days:.1f} entity-days: "
            + ", ".join(series_name(key) for key in members)
        )
    table = Table(title=f"{title}: chosen on one fold, tested on the other (alarms/day budgets)")
    for column in (
        "direction",
        "primary",
        "events",
        "budget",
        "recall",
        "rule recall",
        "random floor",
        "FA/day",
        "precision",
        "lead median s",
        "lead p10 s",
        "recall on selecting",
        "Brier skill",
        "calibration error",
    ):
        left = column in ("direction", "primary")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    has_rule = "rule" in report.directions[0].outcomes
    for direction in report.directions:
        _add_fold_rows(
            table,
            f"{direction.selecting} -> {direction.testing}",
            direction.report.model(direction.primary),
            direction.report.model("rule") if has_rule else None,
        )
    _add_fold_rows(table, "pooled", report.pooled(), report.pooled("rule") if has_rule else None)
    console.print(table)
    _print_fold_candidates(title, report, console=console)


def _add_fold_rows(
    table: Table, label: str, primary: ModelReport, rule: ModelReport | None
) -> None:
    for index, row in enumerate(primary.rows):
        table.add_row(
            label,
            primary.model,
            str(row.events),
            _number(row.budget_per_day, 1),
            _number(row.recall),
            "-" if rule is None else _number(rule.rows[index].recall),
            _number(row.random_floor, 3),
            _number(row.false_alarms_per_day),
            _number(row.precision),
            _number(row.lead_s_median, 0),
            _number(row.lead_s_p10, 0),
            _number(row.validation_recall),
            _number(primary.brier_skill, 3),
            _number(primary.calibration_error, 4),
        )


def _print_fold_candidates(title: str, report: FoldReport, *, console: Console) -> None:
    """Every head: what each fold chose by, and its pooled test recall (random floor)."""
    table = Table(title=f"{title}: every head, both directions pooled (floor in brackets)")
    table.add_column("model")
    for direction in report.directions:
        table.add_column(
            f"mean recall | Brier skill on {direction.selecting} (the choice)", justify="right"
        )
    for budget in report.config.false_alarms_per_day:
        table.add_column(f"pooled recall at {budget:g}/day", justify="right")
    table.add_column("pooled Brier skill", justify="right")
    for model in report.directions[0].outcomes:
        pooled = report.pooled(model)
        table.add_row(
            model,
            *(
                f"{_number(chosen.validation_recall)} | {_number(chosen.validation_brier_skill, 3)}"
                for chosen in (direction.report.model(model) for direction in report.directions)
            ),
            *(f"{_number(row.recall)} ({_number(row.random_floor)})" for row in pooled.rows),
            _number(pooled.brier_skill, 3),
        )
    console.print(table)


def _within_budget(
    rows: Sequence[RecallRow], group: str, false_alarms_per_day: float
) -> RecallRow | None:
    """The best-recall row of `group` whose false alarms on test stay within the budget."""
    eligible = [
        row
        for row in rows
        if row.group == group and row.false_alarms_per_day <= false_alarms_per_day
    ]
    return max(eligible, key=lambda row: row.recall, default=None)


def _budget_text(row: RecallRow | None) -> str:
    if row is None:
        return "none within budget"
    return (
        f"{row.recall:.2f} ({row.false_alarms_per_day:.2f} FA/day on test, "
        f"threshold for {row.budget_per_day:g} on validation)"
    )


def print_targets(
    synthetic: EvaluationReport | None,
    nab: EvaluationReport | None,
    *,
    console: Console,
    simulator: EvaluationReport | None = None,
    nab_folds: FoldReport | None = None,
) -> None:
    """The targets, each with the measured value and whether it is met; the gradual-fault
    targets are judged on every fleet input given (synthetic fleet, simulator campaign), the NAB
    target on the two folds pooled when given (the time split's rows shown, not judged)."""
    table = Table(title=f"Targets (model: {PRIMARY_MODEL}; best of all models in brackets)")
    for column in ("target", "measured", "met"):
        table.add_column(column)
    for name, report in (("synthetic fleet", synthetic), ("simulator", simulator)):
        if report is not None:
            for text, measured, met in _gradual_checks(report, input_name=name):
                table.add_row(text, measured, "yes" if met else "NO")
    if nab is not None:
        # The primary for this input is the head with the best recall on the validation split
        # (its windows only, at the thresholds chosen there); the test split decides nothing.
        selected = nab.selected_model(PRIMARY_MODEL)
        where = "time split, " if nab_folds is not None else ""
        for text, measured, met in _nab_checks(
            nab.model(selected), nab.model("rule"), how=f"{where}primary chosen on validation"
        ):
            verdict = "yes" if met else "NO"
            table.add_row(
                text, measured, verdict if nab_folds is None else f"not judged: {verdict}"
            )
    if nab_folds is not None:
        chosen = ", ".join(
            f"{direction.selecting}->{direction.testing} {direction.primary}"
            for direction in nab_folds.directions
        )
        checks = _nab_checks(
            nab_folds.pooled(),
            nab_folds.pooled("rule"),
            how=f"two folds pooled, primary chosen on the selecting fold: {chosen}",
        )
        for text, measured, met in checks:
            table.add_row(text, measured, "yes" if met else "NO")
    console.print(table)


def _nab_checks(
    primary: ModelReport, rule: ModelReport, *, how: str
) -> list[tuple[str, str, bool]]:
    """The NAB target at each budget: the primary's recall above the rule's and the floor."""
    checks = []
    for row, rule_row in zip(primary.rows, rule.rows, strict=True):
        assert row.budget_per_day == rule_row.budget_per_day and row.group == rule_row.group
        if row.group != "all":
            continue
        checks.append(
            (
                f"NAB at {row.budget_per_day:g} alarms/day: recall > rule and floor ({how})",
                f"{row.recall:.2f} vs rule {rule_row.recall:.2f}, floor {row.random_floor:.3f}",
                row.recall > max(rule_row.recall, row.random_floor),
            )
        )
    return checks


def _gradual_checks(report: EvaluationReport, *, input_name: str) -> list[tuple[str, str, bool]]:
    """The gradual-fault targets of one fleet input: (target, measured, met) rows."""
    model = report.model(PRIMARY_MODEL)
    primary = _within_budget(model.rows, "gradual", 1.0)
    best = max(
        (_within_budget(other.rows, "gradual", 1.0) for other in report.models),
        key=lambda row: -1.0 if row is None else row.recall,
    )
    recall = 0.0 if primary is None else primary.recall
    lead_s = math.nan if primary is None else primary.lead_s_median
    return [
        (
            f"{input_name}: gradual recall >= 0.8 at <= 1 FA/server-day (measured on test)",
            _budget_text(primary) + f" [best model: {_budget_text(best)}]",
            recall >= 0.8,
        ),
        (
            f"{input_name}: median lead >= {3 * HANDOFF_S * 1000:.0f} ms (3x the measured handoff)",
            _number(lead_s, 0),
            not math.isnan(lead_s) and lead_s >= 3 * HANDOFF_S,
        ),
        (
            f"{input_name}: calibration error <= 0.05",
            _number(model.calibration_error, 4),
            model.calibration_error <= 0.05,
        ),
        (f"{input_name}: Brier skill > 0", _number(model.brier_skill, 3), model.brier_skill > 0),
    ]
