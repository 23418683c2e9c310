"""The `Predictor` interface and its online implementation.

`OnlinePredictor` keeps features per entity (`FeatureBank`), queues every tick until its delayed
label is known, and runs one or more model heads side by side: the primary head answers `risk()`,
the others are challengers scored on the same stream (`risks()`), so a challenger can be compared
with, and promoted over, the primary on live data. Each head calibrates its model's raw score
with online Platt scaling on every labelled tick.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from forehand.errors import ConfigError
from forehand.predict._bank import EntityState, FeatureBank
from forehand.predict._calibration import PlattCalibrator
from forehand.predict._config import PredictorConfig
from forehand.predict._detectors import EntityModel
from forehand.predict._labels import LabelledTick
from forehand.predict._models import RiskModel, make_model
from forehand.predict._samples import EntityKey, PathSample, Sample, ServerSample

__all__ = [
    "FeatureContribution",
    "OnlinePredictor",
    "Predictor",
    "PredictorStats",
    "Risk",
]

SNAPSHOT_MAGIC = b"forehand-predictor/1\n"
"""Prefix of every snapshot; a snapshot of another format is refused."""
DEFAULT_MODELS = ("logistic", "rule", "tree")
"""The server heads an `OnlinePredictor` runs unless told otherwise; the first is the primary."""
DEFAULT_PATH_MODELS = ("logistic", "rule")
"""The path heads: there are `path_buckets_per_server` paths per server, so the tree challenger,
the most expensive head, runs on servers only by default."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureContribution:
    """How much one feature pushed a risk up."""

    name: str
    """The feature."""
    value: float
    """Its value at the newest sample."""
    contribution: float
    """Its share of the raw score (model-specific units; larger means riskier)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Risk:
    """Calibrated probability that an entity breaches its SLO within (now + L, now + H]."""

    entity: EntityKey
    """The server or path bucket."""
    probability: float
    """The calibrated probability, 0.0 to 1.0."""
    model: str
    """The head that produced it."""
    score: float
    """The model's raw score before calibration."""
    calibrated: bool
    """Whether the calibrator has learned enough labels for the probability to mean one."""
    in_breach: bool
    """Whether the entity is breaching now (a risk of a future onset means little then)."""
    age_us: int | None
    """Time since the entity's newest sample, None when it never reported."""
    top_features: tuple[FeatureContribution, ...] = ()
    """The features that contributed most, largest first."""


class Predictor(Protocol):
    """Telemetry in, calibrated risks out; state can be saved and restored."""

    def observe(self, sample: Sample, *, now_us: int) -> None:
        """Fold in one sample of a server or of a client-to-server path."""
        ...

    def risk(self, entity: EntityKey, *, now_us: int) -> Risk:
        """The entity's current risk."""
        ...

    def snapshot(self) -> bytes:
        """The whole learned state, for `restore` in a process that trusts these bytes."""
        ...

    def restore(self, snapshot: bytes) -> None:
        """Replace the state with a `snapshot` taken under the same config."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictorStats:
    """Counters of an `OnlinePredictor`."""

    servers: int
    """Servers tracked."""
    labelled_ticks: int
    """Ticks whose delayed label arrived."""
    positive_ticks: int
    """Of those, the positive ones."""
    trained_ticks: int
    """Ticks the learned models trained on (every positive, a sample of negatives)."""
    evicted_servers: int
    """Servers forgotten to stay within `servers_max`."""
    drifts_detected: dict[str, int]
    """Head name -> drifts its model adapted to (server and path models together)."""


class _Head:
    """A model with its calibrator."""

    __slots__ = ("calibrator", "drifts_seen", "entity_model", "model", "name")

    def __init__(self, *, model: RiskModel, learning_rate: float) -> None:
        self.name = model.name
        self.model = model
        # A detector with state per server is fed the server's raw values (see _detectors.py).
        self.entity_model = model if isinstance(model, EntityModel) else None
        self.calibrator = PlattCalibrator(learning_rate=learning_rate)
        self.drifts_seen = 0


class OnlinePredictor:
    """Features, delayed labels and calibrated model heads for servers and path buckets."""

    def __init__(
        self,
        *,
        config: PredictorConfig,
        rng: random.Random,
        models: Sequence[str] = DEFAULT_MODELS,
        path_models: Sequence[str] = DEFAULT_PATH_MODELS,
    ) -> None:
        for names in (models, path_models):
            if not names or len(set(names)) != len(names):
                raise ConfigError(f"need distinct model names, got {list(names)}")
        self._config = config
        self._rng = rng
        self._bank = FeatureBank(config=config)
        rate = config.calibration_learning_rate
        self._heads = {
            kind: [
                _Head(model=make_model(name, config=config, kind=kind, rng=rng), learning_rate=rate)
                for name in names
            ]
            for kind, names in (("server", models), ("path", path_models))
        }
        self._labelled = self._positives = self._trained = 0

    @property
    def config(self) -> PredictorConfig:
        """The configuration."""
        return self._config

    @property
    def calibrated(self) -> bool:
        """Whether the primary server head has learned enough labels for its risks to count."""
        calibrator = self._heads["server"][0].calibrator
        return calibrator.labels_seen >= self._config.calibration_labels_min

    @property
    def model_names(self) -> tuple[str, ...]:
        """The server heads, primary first."""
        return tuple(head.name for head in self._heads["server"])

    def observe(self, sample: Sample, *, now_us: int) -> None:
        """Update features, score every head, and learn from the ticks whose label arrived."""
        state: EntityState
        if isinstance(sample, ServerSample):
            state, breached = self._bank.observe_server(sample, now_us=now_us)
            heads = self._heads["server"]
        else:
            assert isinstance(sample, PathSample)
            state, _, breached = self._bank.observe_path(sample, now_us=now_us)
            heads = self._heads["path"]
        features = state.features
        # How recently the entity breached: the aftermath of a breach looks alarming and is not.
        last_breached_us = state.labels.breach.last_breached_us
        features["breach.recency"] = (
            0.0
            if last_breached_us is None
            else math.exp(-(now_us - last_breached_us) / self._config.labels.horizon_us)
        )
        if isinstance(sample, ServerSample):
            state.scores = tuple(
                head.model.score(features)
                if head.entity_model is None
                else head.entity_model.score_entity(
                    sample.server_id, values=sample.values, features=features, now_us=now_us
                )
                for head in heads
            )
        else:
            state.scores = tuple(head.model.score(features) for head in heads)
        resolved = state.labels.observe(
            breached=breached, now_us=now_us, features=features, scores=state.scores
        )
        for labelled in resolved:
            self._learn(heads, labelled)

    def _learn(self, heads: list[_Head], labelled: LabelledTick) -> None:
        label = labelled.label
        tick = labelled.tick
        self._labelled += 1
        self._positives += label
        config = self._config
        # Every positive trains, a share of negatives does, and so does every negative the
        # primary head scored as alarming: the rare hard negatives (a short spike, a ramp that
        # levels off) are what the false alarms are made of, and a plain share of them is too few.
        train = (
            label
            or self._rng.random() < config.negative_sample_probability
            or tick.scores[0] >= config.hard_negative_score_min
        )
        self._trained += train
        for head, score in zip(heads, tick.scores, strict=True):
            head.calibrator.learn(score, label)
            if not train:
                continue
            head.model.learn(tick.features, label, score=score)
            drifts = head.model.drifts_detected
            if drifts != head.drifts_seen:
                head.drifts_seen = drifts
                head.calibrator.refresh()

    def _state(self, entity: EntityKey) -> tuple[EntityState | None, list[_Head]]:
        server = self._bank.server(entity.server_id)
        if entity.bucket is None:
            return server, self._heads["server"]
        heads = self._heads["path"]
        if server is None or not 0 <= entity.bucket < len(server.paths):
            return None, heads
        return server.paths[entity.bucket], heads

    def probabilities(self, entity: EntityKey) -> dict[str, float]:
        """Each head's calibrated probability for `entity` (0.0 if never observed); cheap."""
        state, heads = self._state(entity)
        if state is None or not state.scores:
            return {head.name: 0.0 for head in heads}
        return {
            head.name: head.calibrator.probability(score)
            for head, score in zip(heads, state.scores, strict=True)
        }

    def risk(self, entity: EntityKey, *, now_us: int, explain: bool = True) -> Risk:
        """The primary head's risk for `entity`, with its top contributing features unless
        `explain` is False (they cost a pass over every feature and a sort)."""
        return self._risk(entity, now_us=now_us, head_index=0, explain=explain)

    def risks(self, entity: EntityKey, *, now_us: int) -> dict[str, Risk]:
        """Every head's risk for `entity`, primary first."""
        heads = self._state(entity)[1]
        return {
            head.name: self._risk(entity, now_us=now_us, head_index=index)
            for index, head in enumerate(heads)
        }

    def _risk(
        self, entity: EntityKey, *, now_us: int, head_index: int, explain: bool = True
    ) -> Risk:
        state, heads = self._state(entity)
        head = heads[head_index]
        if state is None or not state.scores:
            return Risk(
                entity=entity,
                probability=0.0,
                model=head.name,
                score=0.0,
                calibrated=False,
                in_breach=False,
                age_us=None,
            )
        score = state.scores[head_index]
        assert state.last_sample_us is not None
        features = state.features
        top: list[tuple[str, float]] = []
        if explain and head.entity_model is not None and entity.bucket is None:
            top = head.entity_model.contributions_entity(entity.server_id, features)
        elif explain:
            top = head.model.contributions(features)
        top = top[: self._config.contributions_max]
        return Risk(
            entity=entity,
            probability=head.calibrator.probability(score),
            model=head.name,
            score=score,
            calibrated=head.calibrator.labels_seen >= self._config.calibration_labels_min,
            in_breach=state.labels.breach.in_breach,
            age_us=now_us - state.last_sample_us,
            top_features=tuple(
                FeatureContribution(name=name, value=features.get(name, 0.0), contribution=value)
                for name, value in top
            ),
        )

    def forget(self, server_id: str) -> None:
        """Drop everything about `server_id` (it left the fleet)."""
        self._bank.forget(server_id)
        for head in self._heads["server"]:
            if head.entity_model is not None:
                head.entity_model.forget_entity(server_id)

    def stats(self) -> PredictorStats:
        """Counters for logs and metrics."""
        drifts: dict[str, int] = {}
        for heads in self._heads.values():
            for head in heads:
                drifts[head.name] = drifts.get(head.name, 0) + head.model.drifts_detected
        return PredictorStats(
            servers=len(self._bank),
            labelled_ticks=self._labelled,
            positive_ticks=self._positives,
            trained_ticks=self._trained,
            evicted_servers=self._bank.evicted_servers,
            drifts_detected=drifts,
        )

    def snapshot(self) -> bytes:
        """The learned state (features, queues, models, calibrators, rng) as bytes."""
        state = (self._config, self._rng, self._bank, self._heads, self._counters())
        return SNAPSHOT_MAGIC + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, snapshot: bytes) -> None:
        """Replace the state with `snapshot`; only snapshots of this class and config are taken.

        Snapshots are pickles: restore only bytes this deployment wrote itself.
        """
        if not snapshot.startswith(SNAPSHOT_MAGIC):
            raise ConfigError("not a predictor snapshot")
        config, rng, bank, heads, counters = pickle.loads(snapshot[len(SNAPSHOT_MAGIC) :])
        if config != self._config:
            raise ConfigError("the snapshot was taken under a different PredictorConfig")
        assert isinstance(rng, random.Random) and isinstance(bank, FeatureBank)
        self._rng.setstate(rng.getstate())
        self._bank = bank
        self._heads = heads
        self._labelled, self._positives, self._trained = counters

    def _counters(self) -> tuple[int, int, int]:
        return self._labelled, self._positives, self._trained
