"""The synthetic fleet: seeded, labelled from its own telemetry, gradual faults have precursors."""

from __future__ import annotations

import random

from forehand.predict import GRADUAL_FAULTS, SUDDEN_FAULTS, SyntheticConfig, SyntheticFleet

S = 1_000_000
SMALL = SyntheticConfig(servers=2, duration_us=12 * 3_600 * S)


def _events(seed: int) -> list[tuple[str, int, int, str]]:
    fleet = SyntheticFleet(config=SMALL, rng=random.Random(seed))
    for _ in fleet.ticks():
        pass
    return [(e.entity, e.onset_us, e.end_us, e.kind) for e in fleet.events]


def test_same_seed_same_events() -> None:
    """One seed, one trace."""
    assert _events(1) == _events(1)
    assert _events(1) != _events(2)


def test_events_come_from_faults_and_distractors_never_breach() -> None:
    """Every event is one of the faults, each after its episode began; distractors make none."""
    fleet = SyntheticFleet(config=SMALL, rng=random.Random(3))
    for _ in fleet.ticks():
        pass
    faults = {kind.value for kind in GRADUAL_FAULTS + SUDDEN_FAULTS}
    assert fleet.events and {event.kind for event in fleet.events} <= faults
    episodes = {(e.server_id, e.kind.value): e for e in fleet.episodes}
    assert episodes
    for event in fleet.events:
        assert event.end_us >= event.onset_us
        if event.kind in {kind.value for kind in GRADUAL_FAULTS}:
            starts = [
                e.start_us
                for e in fleet.episodes
                if e.server_id == event.entity and e.start_us <= event.onset_us <= e.end_us
            ]
            assert starts and event.onset_us - starts[0] >= 60 * S  # a precursor to see
