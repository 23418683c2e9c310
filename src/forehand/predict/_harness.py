"""Replays a stream of samples through a predictor and records every model's risk per server."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from forehand.predict._evaluation import EntitySeries
from forehand.predict._predictor import OnlinePredictor
from forehand.predict._samples import EntityKey, Sample, ServerSample

__all__ = ["replay"]


def replay(
    predictor: OnlinePredictor,
    ticks: Iterable[tuple[int, Sequence[Sample]]],
    *,
    progress: Callable[[int], None] | None = None,
) -> list[EntitySeries]:
    """Observe every tick's samples, then record each reporting server's risk of every model."""
    times: dict[str, list[int]] = {}
    scores: dict[str, dict[str, list[float]]] = {}
    names = predictor.model_names
    for count, (now_us, samples) in enumerate(ticks):
        for sample in samples:
            predictor.observe(sample, now_us=now_us)
        for sample in samples:
            if not isinstance(sample, ServerSample):
                continue
            server_id = sample.server_id
            if server_id not in times:
                times[server_id] = []
                scores[server_id] = {name: [] for name in names}
            times[server_id].append(now_us)
            own = scores[server_id]
            for name, value in predictor.probabilities(EntityKey(server_id)).items():
                own[name].append(value)
        if progress is not None:
            progress(count)
    return [
        EntitySeries(
            entity=server_id,
            times_us=np.asarray(times[server_id], dtype=np.int64),
            scores={name: np.asarray(values, dtype=np.float64) for name, values in own.items()},
        )
        for server_id, own in scores.items()
    ]
