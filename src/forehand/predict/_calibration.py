"""Online Platt scaling: a model's raw score becomes a probability that means what it says.

`p = sigmoid(slope * score + intercept)`, fitted by AdaGrad on the log loss of every labelled tick
as its label arrives. The models learn on a subsample of the negatives; the calibrator sees every
labelled tick, so its output is a probability of the real stream, and a threshold on it means a
probability.
"""

from __future__ import annotations

import math

__all__ = ["PlattCalibrator", "logit", "sigmoid"]

SCORE_MAX = 30.0
"""Scores are clipped to +-this before calibration, so one extreme score cannot blow a step up."""
SLOPE_MIN = 0.01
"""Smallest slope the calibrator keeps, so it never inverts the ranking of the scores."""
PROBABILITY_MIN = 1e-6
"""Probabilities are clipped into [this, 1 - this] before a logit is taken."""


def sigmoid(value: float) -> float:
    """The logistic function, safe for any float."""
    if value >= 0.0:
        return 1.0 / (1.0 + math.exp(-value))
    exponential = math.exp(value)
    return exponential / (1.0 + exponential)


def logit(probability: float) -> float:
    """The inverse of `sigmoid`, with the probability clipped away from 0 and 1."""
    clipped = min(max(probability, PROBABILITY_MIN), 1.0 - PROBABILITY_MIN)
    return math.log(clipped / (1.0 - clipped))


class PlattCalibrator:
    """Online logistic regression of the label on one raw score."""

    __slots__ = ("_learning_rate", "_squared_gradients", "intercept", "labels_seen", "slope")

    def __init__(self, *, learning_rate: float) -> None:
        assert learning_rate > 0.0
        self._learning_rate = learning_rate
        self._squared_gradients = [1e-8, 1e-8]
        self.slope = 1.0
        """Weight of the score."""
        self.intercept = 0.0
        """Offset; it learns the base rate."""
        self.labels_seen = 0
        """Labelled ticks learned since the last reset."""

    def probability(self, score: float) -> float:
        """The calibrated probability of a raw score."""
        clipped = min(max(score, -SCORE_MAX), SCORE_MAX)
        return sigmoid(self.slope * clipped + self.intercept)

    def refresh(self) -> None:
        """Forget the AdaGrad history, so the fit moves fast again after the model changed."""
        self._squared_gradients = [1e-8, 1e-8]

    def learn(self, score: float, label: bool) -> None:
        """One AdaGrad step on the log loss of (score, label)."""
        clipped = min(max(score, -SCORE_MAX), SCORE_MAX)
        error = sigmoid(self.slope * clipped + self.intercept) - (1.0 if label else 0.0)
        gradients = (error * clipped, error)
        squared = self._squared_gradients
        squared[0] += gradients[0] * gradients[0]
        squared[1] += gradients[1] * gradients[1]
        # A raw score is riskier when higher by contract: a negative slope would invert the
        # ranking, so the slope stays at or above a small positive floor.
        slope = self.slope - self._learning_rate * gradients[0] / math.sqrt(squared[0])
        self.slope = max(slope, SLOPE_MIN)
        self.intercept -= self._learning_rate * gradients[1] / math.sqrt(squared[1])
        self.labels_seen += 1
