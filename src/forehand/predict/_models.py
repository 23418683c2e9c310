"""The risk models: a rule baseline, River online logistic regression, and a River Hoeffding tree.

Each model turns a feature dict into a raw score on a logit-like scale and learns from labelled
ticks; calibration to a probability happens outside, in the head that owns the model. Models plug
in through `MODEL_REGISTRY` (STYLE.md rule 15).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from forehand.errors import ConfigError
from forehand.predict._calibration import PlattCalibrator, logit, sigmoid
from forehand.predict._config import SECOND_US, PredictorConfig

if TYPE_CHECKING:
    from river import compose, drift, tree

__all__ = [
    "MODEL_REGISTRY",
    "BlendModel",
    "LogisticModel",
    "RiskModel",
    "RuleComponent",
    "RuleModel",
    "TreeModel",
    "make_model",
]

BLEND_MODES = ("max", "mean")
"""How a blend (of heads, or of the rule and a detector) combines its members' scores."""
RULE_Z_ALARM = 4.0
"""Z-score that counts as 1.0 in the rule baseline for metrics with no capacity."""
BACKGROUND_SAMPLES_MIN = 200
"""Training ticks a background model must have seen before it may replace the foreground."""
HINGE_SUFFIXES = (
    ".level",
    ".ttt",
    ".ttt_log",
    ".floor",
    ".ttt_floor",
    ".pressure",
    ".max",
    "_share",
    "_share_ewma",
    "ewma_30s",
    "ewma_120s",
    "ewma_600s",
)
"""Dimensionless features (1.0 means trouble) the logistic regression also sees through hinges."""
SHARE_SUFFIXES = ("_share", "_share_ewma")
"""Features that are shares of ticks or of paths (0 to 1), which `share_hinge_knots` also bend."""
RULE_FEATURE = "rule.max"
"""Input of the stacked logistic regression: the rule baseline's largest component."""
RULE_GAIN = 8.0
"""Slope of the rule's logit-like score: `RULE_GAIN * (largest component - 1)`, so an
uncalibrated rule reads 0.5 at its alarm level and its calibrator starts close to sensible."""
POSITIVE_WEIGHT_MAX = 50.0
"""Largest weight a class-balanced learner gives one positive tick."""
Z_SUFFIXES = (".z", "_z")
"""Features in baseline standard deviations (metrics without a scale): signed z-scores (and
`m.z_<tau>s`, the z-scores against further baselines)."""
Z_KNOTS = (2.0, 4.0)
"""Knots of the hinges on absolute z-scores: two deviations, and the rule's alarm level."""


class RiskModel(Protocol):
    """A scorer that learns online from labelled ticks."""

    name: str
    """The model's registry name."""

    def score(self, features: Mapping[str, float]) -> float:
        """The raw score of `features` (higher means riskier), on a logit-like scale."""
        ...

    def learn(
        self, features: Mapping[str, float], label: bool, *, score: float | None = None
    ) -> None:
        """Learn from one labelled tick; `score` is what this model gave the tick when it was
        observed (its prequential prediction), if known."""
        ...

    def contributions(self, features: Mapping[str, float]) -> list[tuple[str, float]]:
        """Features with how much each pushed the score up, largest first."""
        ...

    @property
    def drifts_detected(self) -> int:
        """Drifts this model detected and adapted to."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleComponent:
    """One term of the rule baseline: `abs(features[name]) / divisor` if absolute, else plain."""

    name: str
    """The feature."""
    divisor: float
    """The value of the feature that counts as 1.0 (the alarm level)."""
    absolute: bool = False
    """Take the absolute value first (z-scores of metrics without a capacity)."""


class RuleModel:
    """Thresholds plus time-to-threshold: the largest of the normalised capacity levels.

    For a capacity-bound metric both its level (1.0 at capacity) and its time-to-threshold share
    (1.0 when the Holt trend reaches capacity now, 0.0 when it reaches it a horizon away or never)
    count; for a metric without capacity its absolute z-score over `RULE_Z_ALARM`. A threshold on
    the score is then a classic alarm rule. It does not learn; its calibrator does.
    """

    name = "rule"

    def __init__(self, *, components: tuple[RuleComponent, ...], name: str = "rule") -> None:
        assert components
        self._components = components
        self.name = name

    def score(self, features: Mapping[str, float]) -> float:
        """`RULE_GAIN * (largest component - 1)`."""
        return RULE_GAIN * (self.largest(features) - 1.0)

    def largest(self, features: Mapping[str, float]) -> float:
        """The largest normalised component (1.0 at the alarm level, at least 0.0)."""
        best = 0.0
        for component in self._components:
            value = features.get(component.name, 0.0)
            if component.absolute:
                value = abs(value)
            value /= component.divisor
            best = max(best, value)
        return best

    def learn(
        self, features: Mapping[str, float], label: bool, *, score: float | None = None
    ) -> None:
        """Rules do not learn."""

    def contributions(self, features: Mapping[str, float]) -> list[tuple[str, float]]:
        """Each component's normalised value, largest first."""
        values = []
        for component in self._components:
            value = features.get(component.name, 0.0)
            value = abs(value) if component.absolute else value
            values.append((component.name, value / component.divisor))
        values.sort(key=lambda item: (-item[1], item[0]))
        return values

    @property
    def drifts_detected(self) -> int:
        """Rules never drift."""
        return 0


def server_rule_components(config: PredictorConfig) -> tuple[RuleComponent, ...]:
    """The rule baseline of a server: every capacity level and time-to-threshold, path shares."""
    components: list[RuleComponent] = []
    for metric in config.metrics:
        if metric.capacity is not None and metric.scale is not None:
            level = metric.capacity / metric.scale
            components.append(RuleComponent(name=f"{metric.name}.level", divisor=level))
            components.append(RuleComponent(name=f"{metric.name}.ttt", divisor=1.0))
        elif metric.scale is None:
            components.append(
                RuleComponent(name=f"{metric.name}.z", divisor=RULE_Z_ALARM, absolute=True)
            )
    share = config.path_slo.server_breach_share_min
    components.append(RuleComponent(name="paths.breached_share", divisor=share))
    return tuple(components)


def zscore_components(config: PredictorConfig) -> tuple[RuleComponent, ...]:
    """A multi-scale z-score detector: for every metric without a scale, the largest absolute
    deviation from the entity's baseline of the sample and of each of its EWMAs (a level shift
    too small to stand out in one sample stands out in an average of several); the rule's
    components for the others."""
    components: list[RuleComponent] = []
    for metric in config.metrics:
        if metric.scale is not None:
            continue
        names = [f"{metric.name}.z"] + [
            f"{metric.name}.ewma_{tc // SECOND_US}s_z"
            for tc in config.features.ewma_time_constants_us
        ]
        components.extend(
            RuleComponent(name=name, divisor=RULE_Z_ALARM, absolute=True) for name in names
        )
    scaled = [c for c in server_rule_components(config) if not c.name.endswith(".z")]
    return (*components, *scaled)


def path_rule_components(config: PredictorConfig) -> tuple[RuleComponent, ...]:
    """The rule baseline of a path: loss and RTT excess against the SLO, loss time-to-threshold."""
    slo = config.path_slo
    return (
        RuleComponent(name="path.loss.level", divisor=1.0),
        RuleComponent(name="path.loss.ttt", divisor=1.0),
        RuleComponent(
            name="path.rtt_excess.level", divisor=slo.rtt_excess_us_max / slo.rtt_scale_us
        ),
    )


def _adwin(delta: float) -> drift.ADWIN:
    # River is imported where a learned model is built, so importing the package (and the
    # manager core with it) stays fast for processes that never build one.
    from river import drift

    # River leaves ADWIN's signatures unannotated.
    return drift.ADWIN(delta=delta)  # type: ignore[no-untyped-call]


class _AdaptiveLearner:
    """A River classifier with ADWIN drift handling.

    ADWIN watches the squared error of the model's own predictions on its training stream. At a
    warning a background model starts learning beside the foreground one; at a drift the
    background model (trained on recent data only) replaces the foreground, the way adaptive
    random forests replace a drifting tree.
    """

    def __init__(self, *, config: PredictorConfig) -> None:
        self._config = config
        self._foreground = self._fresh()
        self._background: Any = None
        self._warning = _adwin(config.adwin_warning_delta)
        self._drift = _adwin(config.adwin_drift_delta)
        self._drifts = 0
        self._background_error = self._foreground_error = 0.0
        self._background_seen = 0

    def _fresh(self) -> Any:
        """A new, untrained River classifier."""
        raise NotImplementedError

    def probability(self, features: Mapping[str, float]) -> float:
        """The foreground model's probability of a breach."""
        return self._predict(self._foreground, self._inputs(features))

    def score(self, features: Mapping[str, float]) -> float:
        """The logit of the foreground model's probability."""
        return logit(self.probability(features))

    def learn(
        self, features: Mapping[str, float], label: bool, *, score: float | None = None
    ) -> None:
        """Learn, feed the error to ADWIN, and at a drift promote a background that does better.

        ADWIN watches the prequential error: the model's prediction when the tick was observed
        (`score`, the logit of it), or its prediction now when no score is given.
        """
        target = 1.0 if label else 0.0
        predicted = self.probability(features) if score is None else sigmoid(score)
        squared = (predicted - target) ** 2
        x = self._inputs(features)
        weight = self._weight(label)
        self._foreground.learn_one(x, label, w=weight)
        self._foreground_changed()
        if self._background is not None:
            self._background_error += (self._predict(self._background, x) - target) ** 2
            self._foreground_error += squared
            self._background_seen += 1
            self._background.learn_one(x, label, w=weight)
        self._warning.update(squared)  # type: ignore[no-untyped-call]
        self._drift.update(squared)  # type: ignore[no-untyped-call]
        if (
            self._warning.drift_detected
            and self._background is None
            and self._config.replace_on_drift
        ):
            self._background = self._fresh()
            self._background_error = self._foreground_error = 0.0
            self._background_seen = 0
        if self._drift.drift_detected:
            self._on_drift()

    def _on_drift(self) -> None:
        # The stream is bursty by nature (faults come and go), so a drift alone does not prove
        # the foreground stale: the background replaces it only if it predicted the recent
        # ticks better, the way a challenger replaces a champion.
        seen = self._background_seen
        if (
            self._background is not None
            and seen >= BACKGROUND_SAMPLES_MIN
            and self._background_error < self._foreground_error
        ):
            self._foreground = self._background
            self._drifts += 1
            self._foreground_replaced()
        self._background = None
        self._warning = _adwin(self._config.adwin_warning_delta)
        self._drift = _adwin(self._config.adwin_drift_delta)

    def _inputs(self, features: Mapping[str, float]) -> dict[str, float]:
        """The model's inputs; the features as they are unless a subclass expands them."""
        return dict(features)

    def _foreground_changed(self) -> None:
        """The foreground model learned one tick (a subclass refreshes what it cached)."""

    def _foreground_replaced(self) -> None:
        """A background model replaced the foreground (a subclass drops what it cached)."""

    def _weight(self, label: bool) -> float:
        """The weight of one training tick; 1.0 unless a subclass balances the classes."""
        return 1.0

    @staticmethod
    def _predict(model: Any, x: dict[str, float]) -> float:
        return float(model.predict_proba_one(x).get(True, 0.0))

    @property
    def drifts_detected(self) -> int:
        """Drifts after which a better background model took over."""
        return self._drifts


def _river_sigmoid(value: float) -> float:
    """River's logistic function (`river.utils.math.sigmoid`): exactly 0 and 1 beyond +-30."""
    if value < -30.0:
        return 0.0
    if value > 30.0:
        return 1.0
    return 1.0 / (1.0 + math.exp(-value))


_Term = tuple[float, float, tuple[tuple[float, float], ...]]
"""Per input: slope, offset (its hinges' offsets included), and (knot, slope) of each hinge."""


class _LinearForm:
    """A River `StandardScaler | LogisticRegression` pipeline folded into one affine map.

    River scores `intercept + sum(w_i * (x_i - mean_i) / std_i)` over dicts it builds per call
    (the features, their hinges, the scaled copy): most of a tick's model time. Folded, an input
    costs a multiply-add: slope `w_i / std_i`, offset `-slope * mean_i`; a hinge
    `max(0, x - knot)` adds its slope times the excess only above its knot, its offset always (a
    hinge exists whenever its input does). An input River never saw, or saw with zero variance,
    scales to 0 and adds nothing, as in River. The fold is rebuilt after the pipeline learns; its
    scores equal River's up to the order of float additions (tested).
    """

    __slots__ = ("intercept", "terms")

    def __init__(self, *, intercept: float, terms: dict[str, _Term]) -> None:
        self.intercept = intercept
        """The regression's intercept."""
        self.terms = terms
        """Input name -> its term, for every input the model has seen."""

    @classmethod
    def of(
        cls, pipeline: compose.Pipeline, hinges: Mapping[str, tuple[tuple[str, float], ...]]
    ) -> _LinearForm:
        """The fold of `pipeline` over the inputs in `hinges` (base input -> its hinge inputs)."""
        scaler = pipeline["StandardScaler"]
        regression = pipeline["LogisticRegression"]
        means: dict[str, float] = scaler.means
        variances: dict[str, float] = scaler.vars
        weights: dict[str, float] = regression.weights
        terms: dict[str, _Term] = {}
        # One loop without helper calls: this runs after every learning tick.
        for name, knots in hinges.items():
            variance = variances.get(name, 0.0)
            slope = weights.get(name, 0.0) / math.sqrt(variance) if variance > 0.0 else 0.0
            offset = -slope * means.get(name, 0.0)
            hinge_terms = []
            for hinge, knot in knots:
                variance = variances.get(hinge, 0.0)
                if variance > 0.0:
                    hinge_slope = weights.get(hinge, 0.0) / math.sqrt(variance)
                    offset -= hinge_slope * means.get(hinge, 0.0)
                    hinge_terms.append((knot, hinge_slope))
            terms[name] = (slope, offset, tuple(hinge_terms))
        return cls(intercept=float(regression.intercept), terms=terms)

    def dot(self, features: Mapping[str, float], derived: list[tuple[str, float]]) -> float:
        """The regression's raw logit for these features and derived inputs."""
        total = self.intercept
        terms = self.terms
        for items in (features.items(), derived):
            for name, value in items:
                term = terms.get(name)
                if term is None:
                    continue
                slope, offset, hinge_terms = term
                total += slope * value + offset
                for knot, hinge_slope in hinge_terms:
                    if value > knot:
                        total += hinge_slope * (value - knot)
        return total


class LogisticModel(_AdaptiveLearner):
    """River online logistic regression on standardised features, with ADWIN drift handling.

    With `rule` it is a stacked model: the rule baseline's largest component (`rule.max`, 1.0 at
    the rule's alarm level) is one more input, hinges included, so the regression learns how far
    to trust the rule beside everything else (its absolute z-scores, say, which a linear model
    cannot form from signed ones).
    """

    name = "logistic"

    def __init__(
        self,
        *,
        config: PredictorConfig,
        rule: RuleModel | None = None,
        balanced: bool = False,
        absolute_z: bool = False,
        name: str = "logistic",
    ) -> None:
        super().__init__(config=config)
        self.name = name
        self._rule = rule
        self._balanced = balanced
        self._absolute_z = absolute_z
        self._positives_seen = self._negatives_seen = 0
        self._hinges: dict[str, tuple[tuple[str, float], ...]] = {}
        self._form: _LinearForm | None = None
        self._learns_since_form = 0

    def _weight(self, label: bool) -> float:
        """With `balanced`, a positive weighs negatives seen over positives seen (capped at
        `POSITIVE_WEIGHT_MAX`), so both classes pull on the loss alike however rare breaches are."""
        if not self._balanced:
            return 1.0
        if label:
            self._positives_seen += 1
            return min(max(self._negatives_seen / self._positives_seen, 1.0), POSITIVE_WEIGHT_MAX)
        self._negatives_seen += 1
        return 1.0

    def _fresh(self) -> compose.Pipeline:
        from river import compose, linear_model, optim, preprocessing

        config = self._config
        regression = linear_model.LogisticRegression(
            optimizer=optim.SGD(config.learning_rate), l2=config.l2_regularization
        )
        return compose.Pipeline(preprocessing.StandardScaler(), regression)

    def _inputs(self, features: Mapping[str, float]) -> dict[str, float]:
        """The features plus hinges `max(0, f - knot)` of the dimensionless ones.

        A piecewise-linear basis lets a linear model say "CPU above 0.8 matters far more than
        CPU from 0.3 to 0.6", which is what a capacity-bound metric needs.
        """
        inputs = dict(features)
        inputs.update(self._derived(features))
        hinges = self._hinges
        for name, value in list(inputs.items()):
            knots = hinges.get(name)
            if knots is None:
                knots = hinges[name] = self._knots_of(name)
            for hinge, knot in knots:
                inputs[hinge] = value - knot if value > knot else 0.0
        return inputs

    def _derived(self, features: Mapping[str, float]) -> list[tuple[str, float]]:
        """The inputs computed from several features: the rule's largest component, |z|."""
        derived: list[tuple[str, float]] = []
        if self._rule is not None:
            derived.append((RULE_FEATURE, self._rule.largest(features)))
        if self._absolute_z:
            # A linear model cannot form |z| from z: a series that breaks down may jump either way.
            derived.extend(
                (f"|{name}|", abs(value))
                for name, value in features.items()
                if name.endswith(Z_SUFFIXES) or ".z_" in name
            )
        return derived

    def probability(self, features: Mapping[str, float]) -> float:
        """River's probability of the foreground model, from its linear form (see `_LinearForm`)."""
        form = self._form
        if form is None:
            form = self._form = _LinearForm.of(self._foreground, self._hinges)
        return _river_sigmoid(form.dot(features, self._derived(features)))

    def _foreground_changed(self) -> None:
        # The fold is rebuilt lazily, at the next score after `linear_refresh_learns` steps.
        self._learns_since_form += 1
        if self._learns_since_form >= self._config.linear_refresh_learns:
            self._form = None
            self._learns_since_form = 0

    def _foreground_replaced(self) -> None:
        self._form = None
        self._learns_since_form = 0

    def _knots_of(self, name: str) -> tuple[tuple[str, float], ...]:
        """The hinge inputs of feature `name` (none unless dimensionless or an absolute z-score),
        named once."""
        if name.startswith("|") and name.endswith("|"):
            return tuple((f"{name}>{knot:g}", knot) for knot in Z_KNOTS)
        if not name.endswith(HINGE_SUFFIXES):
            return ()
        knots = self._config.hinge_knots
        if name.endswith(SHARE_SUFFIXES):
            knots = tuple(sorted({*knots, *self._config.share_hinge_knots}))
        return tuple((f"{name}>{knot:g}", knot) for knot in knots)

    def contributions(self, features: Mapping[str, float]) -> list[tuple[str, float]]:
        """Weight times standardised value for each input, largest first."""
        scaler = self._foreground["StandardScaler"]
        regression = self._foreground["LogisticRegression"]
        scaled: dict[str, float] = scaler.transform_one(self._inputs(features))
        weights: dict[str, float] = regression.weights
        values = [(name, weights.get(name, 0.0) * value) for name, value in scaled.items()]
        values.sort(key=lambda item: (-item[1], item[0]))
        return values


class TreeModel(_AdaptiveLearner):
    """River Hoeffding tree, the non-linear challenger, replaced by a fresh one at a drift."""

    name = "tree"

    def _fresh(self) -> tree.HoeffdingTreeClassifier:
        from river import tree

        config = self._config
        return tree.HoeffdingTreeClassifier(
            grace_period=config.tree_grace_period,
            delta=config.tree_split_confidence,
            max_depth=config.tree_depth_max,
            max_size=config.tree_size_mb_max,
            leaf_prediction="mc",
        )

    def contributions(self, features: Mapping[str, float]) -> list[tuple[str, float]]:
        """Trees give no additive attribution: the features furthest from normal, by |value|."""
        values = [
            (name, abs(value))
            for name, value in features.items()
            if name.endswith((".z", ".ttt", "_share"))
        ]
        values.sort(key=lambda item: (-item[1], item[0]))
        return values


class BlendModel:
    """The rule and a learned model, each calibrated on its own, combined as probabilities.

    `mode` "max" alarms when either member does (the rule's sharp view of a jump, the learned
    model's of everything else); "mean" averages them. The score is the logit of the combination;
    the head's own calibrator maps it to the stream's probability. The members' calibrators learn
    on the training ticks only (every positive, a share of the negatives), which inflates both
    alike and leaves the combination's ranking intact.
    """

    def __init__(
        self, *, name: str, members: tuple[RiskModel, ...], mode: str, learning_rate: float
    ) -> None:
        if mode not in BLEND_MODES or len(members) < 2:
            raise ConfigError(f"a blend needs mode 'max' or 'mean' and 2+ members, got {mode!r}")
        self.name = name
        self._members = members
        self._mode = mode
        self._calibrators = tuple(PlattCalibrator(learning_rate=learning_rate) for _ in members)

    def _probabilities(self, features: Mapping[str, float]) -> list[float]:
        return [
            calibrator.probability(member.score(features))
            for member, calibrator in zip(self._members, self._calibrators, strict=True)
        ]

    def score(self, features: Mapping[str, float]) -> float:
        """The logit of the largest (or mean) calibrated member probability."""
        probabilities = self._probabilities(features)
        if self._mode == "max":
            return logit(max(probabilities))
        return logit(sum(probabilities) / len(probabilities))

    def learn(
        self, features: Mapping[str, float], label: bool, *, score: float | None = None
    ) -> None:
        """Each member's calibrator learns on its score before the member learns the tick."""
        for member, calibrator in zip(self._members, self._calibrators, strict=True):
            own = member.score(features)
            calibrator.learn(own, label)
            member.learn(features, label, score=own)

    def contributions(self, features: Mapping[str, float]) -> list[tuple[str, float]]:
        """The contributions of the member with the highest calibrated probability."""
        probabilities = self._probabilities(features)
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        return self._members[best].contributions(features)

    @property
    def drifts_detected(self) -> int:
        """Drifts the members adapted to, together."""
        return sum(member.drifts_detected for member in self._members)


ModelFactory = Callable[[PredictorConfig, str, random.Random], RiskModel]
"""Builds a model for an entity kind ("server" or "path") from the config and a seeded rng."""


def _rule(config: PredictorConfig, kind: str, rng: random.Random) -> RiskModel:
    if kind == "server":
        return RuleModel(components=server_rule_components(config))
    return RuleModel(components=path_rule_components(config))


def _zscore(config: PredictorConfig, kind: str, rng: random.Random) -> RiskModel:
    if kind == "server":
        return RuleModel(components=zscore_components(config), name="zscore")
    return RuleModel(components=path_rule_components(config), name="zscore")


def _logistic(config: PredictorConfig, kind: str, rng: random.Random) -> RiskModel:
    rule = _rule(config, kind, rng) if config.stack_rule else None
    assert rule is None or isinstance(rule, RuleModel)
    return LogisticModel(config=config, rule=rule)


def _tree(config: PredictorConfig, kind: str, rng: random.Random) -> RiskModel:
    return TreeModel(config=config)


def _logistic_balanced(config: PredictorConfig, kind: str, rng: random.Random) -> RiskModel:
    rule = _rule(config, kind, rng) if config.stack_rule else None
    assert rule is None or isinstance(rule, RuleModel)
    return LogisticModel(config=config, rule=rule, balanced=True, name="logistic_balanced")


def _logistic_abs(config: PredictorConfig, kind: str, rng: random.Random) -> RiskModel:
    rule = _rule(config, kind, rng) if config.stack_rule else None
    assert rule is None or isinstance(rule, RuleModel)
    return LogisticModel(config=config, rule=rule, absolute_z=True, name="logistic_abs")


def _robust(*, multi_scale: bool, name: str) -> ModelFactory:
    def factory(config: PredictorConfig, kind: str, rng: random.Random) -> RiskModel:
        # Imported here: the detectors build on this module's rule.
        from forehand.predict._detectors import robust_model

        return robust_model(config, kind, multi_scale=multi_scale, name=name)

    return factory


def _deviation_blend(*, mode: str) -> ModelFactory:
    def factory(config: PredictorConfig, kind: str, rng: random.Random) -> RiskModel:
        # Imported here: the detectors build on this module's rule.
        from forehand.predict._detectors import deviation_blend

        name = f"blend_{mode}_robust_z"
        return deviation_blend(config, kind, mode=mode, multi_scale=False, name=name)

    return factory


def _blend(learned: str, mode: str) -> ModelFactory:
    def factory(config: PredictorConfig, kind: str, rng: random.Random) -> RiskModel:
        members = (_rule(config, kind, rng), MODEL_REGISTRY[learned](config, kind, rng))
        return BlendModel(
            name=f"blend_{mode}_{learned}",
            members=members,
            mode=mode,
            learning_rate=config.calibration_learning_rate,
        )

    return factory


MODEL_REGISTRY: dict[str, ModelFactory] = {
    "rule": _rule,
    "zscore": _zscore,
    "logistic": _logistic,
    "tree": _tree,
    "logistic_balanced": _logistic_balanced,
    "logistic_abs": _logistic_abs,
    "blend_max_logistic": _blend("logistic", "max"),
    "blend_mean_logistic": _blend("logistic", "mean"),
    "blend_max_tree": _blend("tree", "max"),
    "robust_z": _robust(multi_scale=False, name="robust_z"),
    "robust_zscore": _robust(multi_scale=True, name="robust_zscore"),
    "blend_max_robust_z": _deviation_blend(mode="max"),
    "blend_mean_robust_z": _deviation_blend(mode="mean"),
}
"""Model name -> factory."""


def make_model(name: str, *, config: PredictorConfig, kind: str, rng: random.Random) -> RiskModel:
    """The model registered as `name`, for entity kind `kind`."""
    try:
        factory = MODEL_REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {sorted(MODEL_REGISTRY)}") from None
    return factory(config, kind, rng)
