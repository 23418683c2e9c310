"""Delayed labels: positive iff an onset falls within (t + L, t + H]; breach ticks never queue."""

from __future__ import annotations

from forehand.predict import BreachTracker, DelayedLabeler, LabelConfig

S = 1_000_000
CONFIG = LabelConfig(horizon_us=100 * S, lead_us=10 * S, breach_clear_us=20 * S)


def _run(breaching: set[int], *, until: int, pending_max: int = 64) -> dict[int, bool]:
    labeler = DelayedLabeler(config=CONFIG, pending_ticks_max=pending_max, onsets_kept_max=8)
    labels: dict[int, bool] = {}
    for second in range(0, until, 10):
        for labelled in labeler.observe(
            breached=second in breaching, now_us=second * S, features={}, scores=()
        ):
            labels[labelled.tick.time_us // S] = labelled.label
    return labels


def test_labels_follow_the_window_and_arrive_only_after_the_horizon() -> None:
    """Onset at 200 s: ticks 100..180 are positive (onset in (t+10, t+100]), 190 is too late."""
    labels = _run({200, 210}, until=400)
    assert all(labels[t] for t in range(100, 190, 10))
    assert labels[90] is False  # onset at t + 110: beyond the horizon
    assert labels[190] is False  # onset at t + 10: inside the lead, not worth predicting
    assert 200 not in labels and 210 not in labels  # breaching ticks are no training data
    assert 220 not in labels  # still clearing (20 s without breach needed)
    assert labels[230] is False
    assert max(labels) <= 300  # a tick is labelled only once t + H has passed


def test_nothing_is_labelled_before_its_horizon() -> None:
    """A tick at t waits until now >= t + H."""
    labels = _run(set(), until=100)
    assert labels == {}
    labels = _run(set(), until=110)
    assert labels == {0: False}


def test_full_queue_drops_the_oldest_and_counts() -> None:
    """The pending queue has a hard bound."""
    labeler = DelayedLabeler(config=CONFIG, pending_ticks_max=3, onsets_kept_max=2)
    for second in range(5):
        labeler.observe(breached=False, now_us=second * S, features={}, scores=())
    assert labeler.pending_count == 3 and labeler.dropped_ticks == 2


def test_breach_tracker_merges_flicker_into_one_onset() -> None:
    """A breach must stay clear for breach_clear_us before a new onset can start."""
    tracker = BreachTracker(breach_clear_us=20 * S)
    onsets = [
        t
        for t, flag in [(0, True), (10, False), (20, True), (50, False), (80, True)]
        if tracker.update(flag, now_us=t * S)
    ]
    assert onsets == [0, 80]
