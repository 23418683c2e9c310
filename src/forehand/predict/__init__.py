"""Disruption prediction, sans-IO: features, online risk models, the trigger policy, evaluation.

Telemetry goes in through `Predictor.observe` (server metrics and client-to-server paths, hashed
into a bounded number of path buckets per server); calibrated risks come out of `risk`. The
`TriggerPolicy` turns a server's risk into a graded action with hysteresis, k-of-n, dwell,
budget, margin, shadow mode and holdout. `evaluate` scores risks event by event against labelled
breaches; `SyntheticFleet` generates labelled telemetry so all of it runs without a cluster.
"""

from forehand.predict._bank import FeatureBank
from forehand.predict._calibration import PlattCalibrator
from forehand.predict._config import (
    DEFAULT_SERVER_METRICS,
    FeatureConfig,
    LabelConfig,
    MetricSpec,
    PathSloConfig,
    PredictorConfig,
)
from forehand.predict._evaluation import (
    EntitySeries,
    EvaluationConfig,
    EvaluationReport,
    ModelReport,
    RecallRow,
    ThresholdMode,
    alarm_times,
    brier_skill_score,
    calibration_error,
    evaluate,
    random_floor,
    tick_labels,
)
from forehand.predict._features import (
    Baseline,
    Ewma,
    Holt,
    MetricTracker,
    PathTracker,
    RollingWindow,
    WindowMinimum,
    time_to_threshold_s,
)
from forehand.predict._harness import replay
from forehand.predict._labels import BreachTracker, DelayedLabeler, LabelledEvent, LabelledTick
from forehand.predict._models import (
    MODEL_REGISTRY,
    BlendModel,
    LogisticModel,
    RiskModel,
    RuleModel,
    TreeModel,
    make_model,
)
from forehand.predict._policy import (
    Action,
    AlarmState,
    Decision,
    PolicyConfig,
    RiskLevel,
    TargetCandidate,
    TriggerPolicy,
    combined_risk,
    transition_table,
)
from forehand.predict._predictor import (
    FeatureContribution,
    OnlinePredictor,
    Predictor,
    PredictorStats,
    Risk,
)
from forehand.predict._samples import EntityKey, PathSample, Sample, ServerSample, path_bucket
from forehand.predict._synthetic import (
    GRADUAL_FAULTS,
    SUDDEN_FAULTS,
    Episode,
    EpisodeKind,
    SyntheticConfig,
    SyntheticFleet,
)

__all__ = [
    "DEFAULT_SERVER_METRICS",
    "GRADUAL_FAULTS",
    "MODEL_REGISTRY",
    "SUDDEN_FAULTS",
    "Action",
    "AlarmState",
    "Baseline",
    "BreachTracker",
    "Decision",
    "DelayedLabeler",
    "EntityKey",
    "EntitySeries",
    "Episode",
    "EpisodeKind",
    "EvaluationConfig",
    "EvaluationReport",
    "Ewma",
    "FeatureBank",
    "FeatureConfig",
    "FeatureContribution",
    "BlendModel",
    "Holt",
    "LabelConfig",
    "LabelledEvent",
    "LabelledTick",
    "LogisticModel",
    "MetricSpec",
    "MetricTracker",
    "ModelReport",
    "OnlinePredictor",
    "PathSample",
    "PathSloConfig",
    "PathTracker",
    "PlattCalibrator",
    "PolicyConfig",
    "Predictor",
    "PredictorConfig",
    "PredictorStats",
    "RecallRow",
    "Risk",
    "RiskLevel",
    "RiskModel",
    "RollingWindow",
    "RuleModel",
    "Sample",
    "ServerSample",
    "SyntheticConfig",
    "SyntheticFleet",
    "TargetCandidate",
    "ThresholdMode",
    "TreeModel",
    "TriggerPolicy",
    "WindowMinimum",
    "alarm_times",
    "brier_skill_score",
    "calibration_error",
    "combined_risk",
    "evaluate",
    "make_model",
    "path_bucket",
    "random_floor",
    "replay",
    "tick_labels",
    "time_to_threshold_s",
    "transition_table",
]
