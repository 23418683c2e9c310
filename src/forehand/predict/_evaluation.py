"""Event-level evaluation of risk scores (pure: arrays in, a report out).

An onset counts as predicted when an alarm comes within [onset - H, onset - L]. Alarms are the
ticks where the score reaches the threshold, at most one per refractory period (H) per entity;
alarms during a breach are not counted, alarms in (onset - L, onset) are late (neither true nor
false), every other alarm with no onset in [alarm + L, alarm + H] is false. Thresholds are chosen
on the validation split only, to meet a false-alarm budget per entity-day, then applied to the
test split. Beside every recall stands the recall of random alarms at the same rate,
`1 - exp(-rate * (H - L))`. Calibration (Brier skill, expected calibration error) is measured on
the per-tick labels of the test split. Never point-adjusted F1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from forehand.errors import ConfigError
from forehand.predict._config import SECOND_US
from forehand.predict._labels import LabelledEvent

__all__ = [
    "EntitySeries",
    "EvaluationConfig",
    "EvaluationReport",
    "FoldDirection",
    "FoldOutcome",
    "FoldReport",
    "ModelReport",
    "RecallRow",
    "ThresholdMode",
    "alarm_times",
    "brier_skill_score",
    "calibration_error",
    "evaluate",
    "evaluate_folds",
    "fold_row",
    "pool_outcomes",
    "random_floor",
    "tick_labels",
]

DAY_US = 86_400 * SECOND_US
THRESHOLD_CANDIDATES = 400
"""Quantiles of the validation scores tried as thresholds."""
CALIBRATION_BINS = 10
"""Equal-width probability bins of the expected calibration error."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class ThresholdMode(StrEnum):
    """What the validation split's budget counts."""

    FALSE_ALARMS = "false_alarms"
    """False alarms per entity-day (needs validation labels)."""
    ALARMS = "alarms"
    """All alarms per entity-day (needs no labels at all)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationConfig:
    """How scores are turned into alarms and split."""

    horizon_us: int
    """H."""
    lead_us: int
    """L."""
    false_alarms_per_day: tuple[float, ...] = (0.5, 1.0, 2.0)
    """The budgets recall is reported at, per entity-day."""
    warmup_fraction: float = 0.4
    """Share of each entity's time span left out (models learning from scratch)."""
    validation_fraction: float = 0.2
    """Share after the warm-up where thresholds are chosen; the rest is the test split."""
    threshold_mode: ThresholdMode = ThresholdMode.FALSE_ALARMS
    """What the budget counts on the validation split."""
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Report name -> event kinds it covers; every report also has "all"."""
    alarm_ticks_k: int = 1
    """An alarm needs the threshold reached on this many ticks ..."""
    alarm_window_n: int = 1
    """... of the last this many (the trigger policy's k of n; 1 of 1 scores single ticks)."""
    after_breach_us: int = 60 * SECOND_US
    """Ticks this long after a breach's last breaching sample still count as the breach (no
    alarms, no labels), as the predictor's own labels do (`LabelConfig.breach_clear_us`)."""

    def __post_init__(self) -> None:
        if not 0 <= self.lead_us < self.horizon_us:
            raise ConfigError("need 0 <= lead_us < horizon_us")
        if not self.false_alarms_per_day or min(self.false_alarms_per_day) <= 0:
            raise ConfigError("false-alarm budgets must be positive")
        if not 1 <= self.alarm_ticks_k <= self.alarm_window_n:
            raise ConfigError("need 1 <= alarm_ticks_k <= alarm_window_n")
        if self.after_breach_us < 0:
            raise ConfigError("after_breach_us must be non-negative")
        if self.warmup_fraction < 0 or self.validation_fraction <= 0:
            raise ConfigError("split fractions out of range")
        if self.warmup_fraction + self.validation_fraction >= 1:
            raise ConfigError("warm-up and validation must leave a test split")


@dataclass(frozen=True, slots=True, kw_only=True)
class EntitySeries:
    """One entity's scores over time, one array per model."""

    entity: str
    """The entity."""
    times_us: IntArray
    """Tick times, increasing."""
    scores: Mapping[str, FloatArray]
    """Model name -> calibrated probability at each tick."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecallRow:
    """Recall of one group of events at one false-alarm budget."""

    group: str
    """The events covered."""
    budget_per_day: float
    """The budget the threshold was chosen for on validation."""
    threshold: float
    """The threshold chosen."""
    events: int
    """Test events in the group."""
    recall: float
    """Share of them predicted."""
    random_floor: float
    """Recall of random alarms at the test alarm rate."""
    false_alarms_per_day: float
    """False alarms per entity-day on test (all groups)."""
    precision: float
    """True alarms over true plus false alarms on test."""
    lead_s_median: float
    """Median lead time of the predicted events, in seconds (nan if none)."""
    lead_s_p10: float
    """10th percentile of the lead time, in seconds (nan if none)."""
    validation_recall: float = math.nan
    """Recall of the group's validation events at this threshold (nan if it has none there)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelReport:
    """Everything measured for one model."""

    model: str
    """The model."""
    rows: tuple[RecallRow, ...]
    """Recall rows, by group then budget."""
    brier_skill: float
    """1 - Brier / Brier of the test base rate, over the test ticks."""
    calibration_error: float
    """Expected calibration error over the test ticks."""
    base_rate: float
    """Share of positive test ticks."""
    validation_brier_skill: float = math.nan
    """Brier skill score over the labelled validation ticks (the base rate of validation)."""
    validation_recall: float = math.nan
    """Recall of all validation events at each budget's threshold, averaged over the budgets:
    what `EvaluationReport.selected_model` chooses by, never looking at the test split."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationReport:
    """A report per model, and the sizes of the splits."""

    models: tuple[ModelReport, ...]
    """One per model."""
    test_entity_days: float
    """Entity-days in the test split."""
    validation_entity_days: float
    """Entity-days in the validation split."""
    test_events: Mapping[str, int]
    """Group -> test events."""

    def selected_model(self, default: str, *, baseline: str = "rule") -> str:
        """The model to call primary for this input, chosen on the validation split only.

        Among the models other than `baseline` (the one the targets compare against): the best
        validation recall at the budgets' thresholds (the quantity the targets judge), then the
        best validation Brier skill; `default` keeps ties, and wins when nothing was measured.
        """

        def key(report: ModelReport) -> tuple[float, float, bool]:
            recall, skill = report.validation_recall, report.validation_brier_skill
            return (
                -math.inf if math.isnan(recall) else recall,
                -math.inf if math.isnan(skill) else skill,
                report.model == default,
            )

        candidates = [report for report in self.models if report.model != baseline]
        if not candidates:
            return default
        return max(candidates, key=key).model

    def model(self, name: str) -> ModelReport:
        """The report of model `name`."""
        for report in self.models:
            if report.model == name:
                return report
        raise KeyError(name)


def random_floor(alarms_per_second: float, *, horizon_us: int, lead_us: int) -> float:
    """Recall of alarms raised at random at this rate: P(at least one in a window of H - L)."""
    return 1.0 - math.exp(-alarms_per_second * (horizon_us - lead_us) / SECOND_US)


def alarm_times(
    times_us: IntArray,
    scores: FloatArray,
    threshold: float,
    *,
    refractory_us: int,
    masked: BoolArray,
    ticks_k: int = 1,
    window_n: int = 1,
) -> IntArray:
    """Times where the score reached `threshold` on k of the last n ticks outside `masked`, at
    most one per refractory period (the trigger policy's k of n, so a one-tick spike is no alarm).
    """
    assert 1 <= ticks_k <= window_n
    above = (scores >= threshold) & ~masked
    if window_n > 1:
        counts = np.convolve(above.astype(np.int64), np.ones(window_n, dtype=np.int64))
        above = above & (counts[: len(above)] >= ticks_k)
    candidates = np.flatnonzero(above)
    alarms: list[int] = []
    next_allowed = -(2**62)
    for index in candidates.tolist():
        time_us = int(times_us[index])
        if time_us >= next_allowed:
            alarms.append(time_us)
            next_allowed = time_us + refractory_us
    return np.asarray(alarms, dtype=np.int64)


def tick_labels(
    times_us: IntArray, onsets_us: IntArray, *, horizon_us: int, lead_us: int
) -> BoolArray:
    """Per tick: does an onset fall within (t + L, t + H]?"""
    first = np.searchsorted(onsets_us, times_us + lead_us, side="right")
    last = np.searchsorted(onsets_us, times_us + horizon_us, side="right")
    labels: BoolArray = last > first
    return labels


def breach_mask(
    times_us: IntArray, events: Sequence[LabelledEvent], *, after_breach_us: int
) -> BoolArray:
    """Per tick: is the entity breaching (from an event's onset to after_breach_us past its end)?"""
    mask = np.zeros(len(times_us), dtype=np.bool_)
    for event in events:
        start = np.searchsorted(times_us, event.onset_us, side="left")
        stop = np.searchsorted(times_us, event.end_us + after_breach_us, side="right")
        mask[start:stop] = True
    return mask


def brier_skill_score(probabilities: FloatArray, labels: BoolArray) -> float:
    """1 - Brier score / Brier score of always forecasting the base rate (nan if no variance)."""
    outcomes = labels.astype(np.float64)
    base_rate = float(outcomes.mean()) if len(outcomes) else 0.0
    reference = base_rate * (1.0 - base_rate)
    if reference == 0.0:
        return math.nan
    brier = float(np.mean((probabilities - outcomes) ** 2))
    return 1.0 - brier / reference


def calibration_error(probabilities: FloatArray, labels: BoolArray) -> float:
    """Expected calibration error over equal-width bins, weighted by their tick counts."""
    if not len(probabilities):
        return math.nan
    bins = np.minimum((probabilities * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    outcomes = labels.astype(np.float64)
    total = 0.0
    for index in range(CALIBRATION_BINS):
        selected = bins == index
        count = int(selected.sum())
        if count:
            gap = abs(float(probabilities[selected].mean()) - float(outcomes[selected].mean()))
            total += count * gap
    return total / len(probabilities)


@dataclass(slots=True, kw_only=True)
class _Split:
    """One entity's ticks and events in one split."""

    entity: str
    times_us: IntArray
    scores: Mapping[str, FloatArray]
    masked: BoolArray
    onsets_us: IntArray
    events: list[LabelledEvent]
    labels: BoolArray
    labelled: BoolArray
    span_us: int


def _splits(
    series: Sequence[EntitySeries], events: Sequence[LabelledEvent], config: EvaluationConfig
) -> tuple[list[_Split], list[_Split]]:
    by_entity: dict[str, list[LabelledEvent]] = {}
    for event in events:
        by_entity.setdefault(event.entity, []).append(event)
    validation: list[_Split] = []
    test: list[_Split] = []
    for entry in series:
        times = entry.times_us
        if len(times) < 4:
            continue
        start, end = int(times[0]), int(times[-1])
        span = end - start
        bounds = (
            start + int(span * config.warmup_fraction),
            start + int(span * (config.warmup_fraction + config.validation_fraction)),
            end + 1,
        )
        own = sorted(by_entity.get(entry.entity, []), key=lambda event: event.onset_us)
        for low, high, out in ((bounds[0], bounds[1], validation), (bounds[1], bounds[2], test)):
            out.append(_cut(entry, own=own, low=low, high=high, end=end, config=config))
    return validation, test


def _cut(
    entry: EntitySeries,
    *,
    own: list[LabelledEvent],
    low: int,
    high: int,
    end: int,
    config: EvaluationConfig,
) -> _Split:
    times = entry.times_us
    selected = (times >= low) & (times < high)
    chosen = times[selected]
    all_onsets = np.asarray([event.onset_us for event in own], dtype=np.int64)
    masked = breach_mask(chosen, own, after_breach_us=config.after_breach_us)
    labels = tick_labels(chosen, all_onsets, horizon_us=config.horizon_us, lead_us=config.lead_us)
    labelled = ~masked & (chosen + config.horizon_us <= end)
    inside = [event for event in own if low <= event.onset_us < high]
    return _Split(
        entity=entry.entity,
        times_us=chosen,
        scores={name: values[selected] for name, values in entry.scores.items()},
        masked=masked,
        onsets_us=all_onsets,
        events=inside,
        labels=labels,
        labelled=labelled,
        span_us=max(high - low, 0) if high <= end else end - low,
    )


@dataclass(slots=True, kw_only=True)
class _Outcome:
    """Alarms of one model at one threshold over one split."""

    alarms: int = 0
    true_alarms: int = 0
    false_alarms: int = 0
    leads_us: dict[str, list[int]] = field(default_factory=dict)
    predicted: dict[str, int] = field(default_factory=dict)


def _score(
    splits: Sequence[_Split],
    model: str,
    threshold: float,
    config: EvaluationConfig,
    groups: Mapping[str, tuple[str, ...]],
) -> _Outcome:
    outcome = _Outcome(leads_us={name: [] for name in groups}, predicted=dict.fromkeys(groups, 0))
    horizon, lead = config.horizon_us, config.lead_us
    for split in splits:
        alarms = alarm_times(
            split.times_us,
            split.scores[model],
            threshold,
            refractory_us=horizon,
            masked=split.masked,
            ticks_k=config.alarm_ticks_k,
            window_n=config.alarm_window_n,
        )
        onsets = split.onsets_us
        outcome.alarms += len(alarms)
        if len(alarms):
            next_onset = np.searchsorted(onsets, alarms + lead, side="left")
            padded = np.append(onsets, np.iinfo(np.int64).max)
            true = padded[next_onset] <= alarms + horizon
            late_index = np.searchsorted(onsets, alarms, side="right")
            late = ~true & (late_index < len(onsets)) & (padded[late_index] < alarms + lead)
            outcome.true_alarms += int(true.sum())
            outcome.false_alarms += int((~true & ~late).sum())
        for event in split.events:
            first = np.searchsorted(alarms, event.onset_us - horizon, side="left")
            if first < len(alarms) and alarms[first] <= event.onset_us - lead:
                for name, kinds in groups.items():
                    if not kinds or event.kind in kinds:
                        outcome.predicted[name] += 1
                        outcome.leads_us[name].append(event.onset_us - int(alarms[first]))
    return outcome


def _choose_threshold(
    splits: Sequence[_Split], model: str, budget_per_day: float, config: EvaluationConfig
) -> float:
    days = sum(split.span_us for split in splits) / DAY_US
    values = np.concatenate([split.scores[model][~split.masked] for split in splits])
    if not len(values) or days <= 0:
        return 1.0
    candidates = np.unique(np.quantile(values, np.linspace(0.5, 1.0, THRESHOLD_CANDIDATES)))
    candidates = np.append(candidates, np.nextafter(values.max(), np.inf))
    low, high = 0, len(candidates) - 1
    # The cost falls as the threshold rises: find the lowest threshold within budget.
    while low < high:
        middle = (low + high) // 2
        outcome = _score(splits, model, float(candidates[middle]), config, {"all": ()})
        count = (
            outcome.alarms
            if config.threshold_mode is ThresholdMode.ALARMS
            else (outcome.false_alarms)
        )
        if count / days <= budget_per_day:
            high = middle
        else:
            low = middle + 1
    return float(candidates[low])


def evaluate(
    series: Sequence[EntitySeries], events: Iterable[LabelledEvent], config: EvaluationConfig
) -> EvaluationReport:
    """Choose thresholds on validation, score the test split, for every model in the series."""
    events = list(events)
    validation, test = _splits(series, events, config)
    groups: dict[str, tuple[str, ...]] = {"all": (), **config.groups}
    test_events = {
        name: sum(1 for split in test for event in split.events if not kinds or event.kind in kinds)
        for name, kinds in groups.items()
    }
    test_days = sum(split.span_us for split in test) / DAY_US
    models = sorted({name for entry in series for name in entry.scores})
    reports = [
        _model_report(
            name,
            validation=validation,
            test=test,
            groups=groups,
            test_events=test_events,
            test_days=test_days,
            config=config,
        )
        for name in models
    ]
    return EvaluationReport(
        models=tuple(reports),
        test_entity_days=test_days,
        validation_entity_days=sum(split.span_us for split in validation) / DAY_US,
        test_events=test_events,
    )


def _model_report(
    model: str,
    *,
    validation: Sequence[_Split],
    test: Sequence[_Split],
    groups: Mapping[str, tuple[str, ...]],
    test_events: Mapping[str, int],
    test_days: float,
    config: EvaluationConfig,
) -> ModelReport:
    rows: list[RecallRow] = []
    validation_events = {
        name: sum(
            1 for split in validation for event in split.events if not kinds or event.kind in kinds
        )
        for name, kinds in groups.items()
    }
    validation_recalls: list[float] = []
    for budget in config.false_alarms_per_day:
        threshold = _choose_threshold(validation, model, budget, config)
        seen = _score(validation, model, threshold, config, groups)
        if validation_events["all"]:
            validation_recalls.append(seen.predicted["all"] / validation_events["all"])
        outcome = _score(test, model, threshold, config, groups)
        rate = outcome.alarms / (test_days * DAY_US / SECOND_US) if test_days else 0.0
        floor = random_floor(rate, horizon_us=config.horizon_us, lead_us=config.lead_us)
        judged = outcome.true_alarms + outcome.false_alarms
        for name in groups:
            leads_s = np.asarray(outcome.leads_us[name], dtype=np.float64) / SECOND_US
            count = test_events[name]
            rows.append(
                RecallRow(
                    group=name,
                    budget_per_day=budget,
                    threshold=threshold,
                    events=count,
                    recall=outcome.predicted[name] / count if count else math.nan,
                    random_floor=floor,
                    false_alarms_per_day=outcome.false_alarms / test_days
                    if test_days
                    else math.nan,
                    precision=outcome.true_alarms / judged if judged else math.nan,
                    lead_s_median=float(np.median(leads_s)) if len(leads_s) else math.nan,
                    lead_s_p10=float(np.quantile(leads_s, 0.1)) if len(leads_s) else math.nan,
                    validation_recall=seen.predicted[name] / validation_events[name]
                    if validation_events[name]
                    else math.nan,
                )
            )
    rows.sort(key=lambda row: (list(groups).index(row.group), row.budget_per_day))
    return _scored_report(model, rows, test, validation, validation_recalls)


def _scored_report(
    model: str,
    rows: Sequence[RecallRow],
    tested_on: Sequence[_Split],
    chosen_on: Sequence[_Split],
    recalls: Sequence[float],
) -> ModelReport:
    """`model`'s report: its rows, calibration on `tested_on`, and its Brier skill and mean
    recall on `chosen_on` (where its thresholds were chosen)."""
    probabilities, labels = _labelled(tested_on, model)
    chosen_probabilities, chosen_labels = _labelled(chosen_on, model)
    return ModelReport(
        model=model,
        rows=tuple(rows),
        brier_skill=brier_skill_score(probabilities, labels),
        calibration_error=calibration_error(probabilities, labels),
        base_rate=float(labels.mean()) if len(labels) else math.nan,
        validation_brier_skill=brier_skill_score(chosen_probabilities, chosen_labels),
        validation_recall=float(np.mean(recalls)) if recalls else math.nan,
    )


def _labelled(splits: Sequence[_Split], model: str) -> tuple[FloatArray, BoolArray]:
    """The model's probabilities and the labels over the labelled ticks of `splits`."""
    if not splits:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.bool_)
    probabilities = np.concatenate([split.scores[model][split.labelled] for split in splits])
    labels = np.concatenate([split.labels[split.labelled] for split in splits])
    return probabilities, labels


@dataclass(frozen=True, slots=True, kw_only=True)
class FoldOutcome:
    """One model's alarms on a testing fold at the threshold chosen on the selecting fold, as
    counts, so the two directions of a cross-fold evaluation add up."""

    budget_per_day: float
    """The budget the threshold was chosen for on the selecting fold."""
    threshold: float
    """The threshold chosen there (nan once pooled: each direction chose its own)."""
    events: int
    """Events on the testing fold."""
    predicted: int
    """Of them, those predicted."""
    alarms: int
    """Alarms raised on the testing fold."""
    true_alarms: int
    """Alarms followed by an onset within [alarm + L, alarm + H]."""
    false_alarms: int
    """Alarms neither true nor late."""
    test_span_us: int
    """Entity-time of the testing fold (sum over its entities)."""
    leads_us: tuple[int, ...]
    """Lead time of each predicted event."""


def pool_outcomes(outcomes: Sequence[FoldOutcome]) -> FoldOutcome:
    """The outcomes of several testing folds at one budget, summed."""
    assert outcomes and len({outcome.budget_per_day for outcome in outcomes}) == 1
    return FoldOutcome(
        budget_per_day=outcomes[0].budget_per_day,
        threshold=outcomes[0].threshold if len(outcomes) == 1 else math.nan,
        events=sum(outcome.events for outcome in outcomes),
        predicted=sum(outcome.predicted for outcome in outcomes),
        alarms=sum(outcome.alarms for outcome in outcomes),
        true_alarms=sum(outcome.true_alarms for outcome in outcomes),
        false_alarms=sum(outcome.false_alarms for outcome in outcomes),
        test_span_us=sum(outcome.test_span_us for outcome in outcomes),
        leads_us=tuple(lead for outcome in outcomes for lead in outcome.leads_us),
    )


def fold_row(
    outcome: FoldOutcome, config: EvaluationConfig, *, validation_recall: float = math.nan
) -> RecallRow:
    """The recall row (group "all") of an outcome, its floor at the outcome's own alarm rate."""
    test_days = outcome.test_span_us / DAY_US
    rate = outcome.alarms / (outcome.test_span_us / SECOND_US) if outcome.test_span_us else 0.0
    judged = outcome.true_alarms + outcome.false_alarms
    leads_s = np.asarray(outcome.leads_us, dtype=np.float64) / SECOND_US
    return RecallRow(
        group="all",
        budget_per_day=outcome.budget_per_day,
        threshold=outcome.threshold,
        events=outcome.events,
        recall=outcome.predicted / outcome.events if outcome.events else math.nan,
        random_floor=random_floor(rate, horizon_us=config.horizon_us, lead_us=config.lead_us),
        false_alarms_per_day=outcome.false_alarms / test_days if test_days else math.nan,
        precision=outcome.true_alarms / judged if judged else math.nan,
        lead_s_median=float(np.median(leads_s)) if len(leads_s) else math.nan,
        lead_s_p10=float(np.quantile(leads_s, 0.1)) if len(leads_s) else math.nan,
        validation_recall=validation_recall,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FoldDirection:
    """Thresholds and the primary chosen on one fold of entities, tested on the other."""

    selecting: str
    """The fold the thresholds and the primary come from."""
    testing: str
    """The fold they are tested on."""
    report: EvaluationReport
    """Every model: its `validation_*` fields measured on the selecting fold, its rows and
    calibration on the testing fold."""
    primary: str
    """The model `EvaluationReport.selected_model` picks on the selecting fold."""
    outcomes: Mapping[str, tuple[FoldOutcome, ...]]
    """Model -> its outcome on the testing fold at each budget."""
    probabilities: Mapping[str, FloatArray]
    """Model -> its probabilities over the labelled ticks of the testing fold."""
    labels: BoolArray
    """The labels of those ticks."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FoldReport:
    """Two folds of entities; each selects (thresholds, primary) for the other, which it tests."""

    folds: Mapping[str, tuple[str, ...]]
    """Fold name -> its entities."""
    directions: tuple[FoldDirection, ...]
    """First fold selecting for the second, then the reverse."""
    config: EvaluationConfig
    """Horizon, lead, budgets and alarm rule (the floor needs H and L)."""

    def pooled(self, model: str | None = None) -> ModelReport:
        """Both testing folds at once: `model`, or each direction's own primary if None.

        Counts add up (events, alarms, entity-time, leads); Brier skill and calibration error
        are over the labelled ticks of both testing folds, against their common base rate.
        """
        chosen = [direction.primary if model is None else model for direction in self.directions]
        rows = [
            fold_row(
                pool_outcomes(
                    [
                        direction.outcomes[name][index]
                        for direction, name in zip(self.directions, chosen, strict=True)
                    ]
                ),
                self.config,
            )
            for index in range(len(self.config.false_alarms_per_day))
        ]
        probabilities = np.concatenate(
            [
                direction.probabilities[name]
                for direction, name in zip(self.directions, chosen, strict=True)
            ]
        )
        labels = np.concatenate([direction.labels for direction in self.directions])
        return ModelReport(
            model="/".join(dict.fromkeys(chosen)),
            rows=tuple(rows),
            brier_skill=brier_skill_score(probabilities, labels),
            calibration_error=calibration_error(probabilities, labels),
            base_rate=float(labels.mean()) if len(labels) else math.nan,
        )


def evaluate_folds(
    series: Sequence[EntitySeries],
    events: Iterable[LabelledEvent],
    config: EvaluationConfig,
    *,
    folds: Mapping[str, Sequence[str]],
    default: str,
    baseline: str = "rule",
) -> FoldReport:
    """Cross-validation by entity: thresholds and the primary chosen on one fold, tested on the
    other, then the reverse.

    Each entity's first `warmup_fraction` of its span is left out, as in `evaluate`; the rest
    of it selects in one direction and is tested in the other, so every event after the warm-up
    is tested exactly once. Events are reported as one group ("all").
    """
    names = list(folds)
    if len(names) != 2:
        raise ConfigError(f"need exactly two folds, got {len(names)}")
    known = {entry.entity for entry in series}
    members = [set(folds[name]) for name in names]
    if not all(members):
        raise ConfigError("every fold needs at least one entity")
    if members[0] & members[1]:
        raise ConfigError(f"entities in both folds: {sorted(members[0] & members[1])}")
    if (members[0] | members[1]) != known:
        missing, unknown = known - members[0] - members[1], (members[0] | members[1]) - known
        raise ConfigError(f"folds must cover the entities: missing {missing}, unknown {unknown}")
    after_warmup = _after_warmup(series, list(events), config)
    kept = [
        [after_warmup[entity] for entity in sorted(member) if entity in after_warmup]
        for member in members
    ]
    for name, splits in zip(names, kept, strict=True):
        if not splits:
            raise ConfigError(f"fold {name} has no entity with enough ticks after the warm-up")
    models = sorted({name for entry in series for name in entry.scores})
    directions = tuple(
        _fold_direction(
            kept[source],
            kept[target],
            names=(names[source], names[target]),
            models=models,
            config=config,
            default=default,
            baseline=baseline,
        )
        for source, target in ((0, 1), (1, 0))
    )
    return FoldReport(
        folds={name: tuple(sorted(folds[name])) for name in names},
        directions=directions,
        config=config,
    )


def _after_warmup(
    series: Sequence[EntitySeries], events: Sequence[LabelledEvent], config: EvaluationConfig
) -> dict[str, _Split]:
    """Each entity's ticks and events after its warm-up (the part `evaluate` splits in two)."""
    by_entity: dict[str, list[LabelledEvent]] = {}
    for event in events:
        by_entity.setdefault(event.entity, []).append(event)
    cut: dict[str, _Split] = {}
    for entry in series:
        times = entry.times_us
        if len(times) < 4:
            continue
        start, end = int(times[0]), int(times[-1])
        low = start + int((end - start) * config.warmup_fraction)
        own = sorted(by_entity.get(entry.entity, []), key=lambda event: event.onset_us)
        cut[entry.entity] = _cut(entry, own=own, low=low, high=end + 1, end=end, config=config)
    return cut


def _fold_direction(
    chosen_on: Sequence[_Split],
    tested_on: Sequence[_Split],
    *,
    names: tuple[str, str],
    models: Sequence[str],
    config: EvaluationConfig,
    default: str,
    baseline: str,
) -> FoldDirection:
    """Every model's thresholds chosen on `chosen_on`, tested on `tested_on`."""
    reports: list[ModelReport] = []
    outcomes: dict[str, tuple[FoldOutcome, ...]] = {}
    probabilities: dict[str, FloatArray] = {}
    labels: BoolArray = np.zeros(0, dtype=np.bool_)
    for model in models:
        model_report, outcomes[model] = _fold_model(model, chosen_on, tested_on, config)
        reports.append(model_report)
        probabilities[model], labels = _labelled(tested_on, model)
    report = EvaluationReport(
        models=tuple(reports),
        test_entity_days=sum(split.span_us for split in tested_on) / DAY_US,
        validation_entity_days=sum(split.span_us for split in chosen_on) / DAY_US,
        test_events={"all": sum(len(split.events) for split in tested_on)},
    )
    return FoldDirection(
        selecting=names[0],
        testing=names[1],
        report=report,
        primary=report.selected_model(default, baseline=baseline),
        outcomes=outcomes,
        probabilities=probabilities,
        labels=labels,
    )


def _fold_model(
    model: str, chosen_on: Sequence[_Split], tested_on: Sequence[_Split], config: EvaluationConfig
) -> tuple[ModelReport, tuple[FoldOutcome, ...]]:
    """One model's thresholds (and its recall) on `chosen_on`, its outcome on `tested_on`."""
    selecting_events = sum(len(split.events) for split in chosen_on)
    testing_events = sum(len(split.events) for split in tested_on)
    test_span_us = sum(split.span_us for split in tested_on)
    outcomes: list[FoldOutcome] = []
    rows: list[RecallRow] = []
    recalls: list[float] = []
    for budget in config.false_alarms_per_day:
        threshold = _choose_threshold(chosen_on, model, budget, config)
        seen = _score(chosen_on, model, threshold, config, {"all": ()})
        recall = seen.predicted["all"] / selecting_events if selecting_events else math.nan
        if selecting_events:
            recalls.append(recall)
        tested = _score(tested_on, model, threshold, config, {"all": ()})
        outcome = FoldOutcome(
            budget_per_day=budget,
            threshold=threshold,
            events=testing_events,
            predicted=tested.predicted["all"],
            alarms=tested.alarms,
            true_alarms=tested.true_alarms,
            false_alarms=tested.false_alarms,
            test_span_us=test_span_us,
            leads_us=tuple(tested.leads_us["all"]),
        )
        outcomes.append(outcome)
        rows.append(fold_row(outcome, config, validation_recall=recall))
    return _scored_report(model, rows, tested_on, chosen_on, recalls), tuple(outcomes)
