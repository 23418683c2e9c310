"""What each delta changed, kept with the version it made, so that a version costs what it changes.

A delta that hands off a few parts touches a few buckets of the part and override indexes and a
few servers' arrays in the engine; everything else the new version shares with the old one by
identity. Each version keeps a record of what its delta wrote (a `Step`), and of the steps of its
recent ancestors (at most `STEPS_MAX`, shared with its parent's tuple), so that comparing it with
one of those ancestors (`diff`, `primary_loads`) looks only at what some step in between wrote,
never at the whole map. Anything not named by a step is the same object in both versions.

A step cannot name engine arrays across a change of the eligible servers (positions shift); it
says so (`arrays` is None) and readers fall back to the full comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STEPS_MAX", "Changes", "Lineage", "Step", "new_lineage"]

STEPS_MAX = 32
"""Most delta steps a version remembers: a comparison with an older ancestor (or an unrelated
version) scans the whole map, as it always did."""

MEMBERS = 0
"""Engine table number of the primary arrays (see `EngineWriter.written`)."""


@dataclass(frozen=True, slots=True)
class Step:
    """What one delta wrote, from the version it applied to."""

    base: object
    """The lineage token of the version the delta applied to."""
    part_buckets: frozenset[int]
    """Part-index buckets written (their contents may differ)."""
    override_buckets: frozenset[int]
    """Override-index buckets written."""
    arrays: frozenset[tuple[int, int]] | None
    """Engine arrays written, as (table, server position); None when the eligible servers
    changed, which moves positions, and then every array may differ."""
    pinned: frozenset[str]
    """Servers whose count of override primaries changed."""
    member_hashes: frozenset[int] = frozenset()
    """Hashes that entered or left a member array (`EngineWriter.members_changed`); meaningful
    only when `arrays` is not None."""


@dataclass(frozen=True, slots=True)
class Changes:
    """The union of the steps from one version to another."""

    part_buckets: frozenset[int]
    """Part-index buckets some step wrote."""
    override_buckets: frozenset[int]
    """Override-index buckets some step wrote."""
    arrays: frozenset[tuple[int, int]] | None
    """Engine arrays some step wrote; None when the eligible servers changed on the way."""
    pinned: frozenset[str]
    """Servers whose override-primary count some step changed."""
    member_hashes: frozenset[int] = frozenset()
    """Hashes that entered or left a member array at some step; meaningful only when `arrays`
    is not None."""


@dataclass(frozen=True, slots=True)
class Lineage:
    """A version's identity for its descendants, and the steps that led to it."""

    token: object
    """Stands for this version in its descendants' steps (holding it keeps no map alive)."""
    steps: tuple[Step, ...]
    """The last steps before this version, oldest first; the last one made it."""

    def after(self, step: Step) -> Lineage:
        """The lineage of the version `step` makes of this one."""
        assert step.base is self.token, "a step applies to the version it names"
        return Lineage(token=object(), steps=(*self.steps[1 - STEPS_MAX :], step))

    def since(self, ancestor: Lineage) -> Changes | None:
        """What changed from `ancestor` to this version; None when `ancestor` is not one of
        the remembered ancestors (then anything may differ). Empty for the version itself."""
        if ancestor.token is self.token:
            return Changes(
                part_buckets=frozenset(), override_buckets=frozenset(), arrays=frozenset(),
                pinned=frozenset(),
            )  # fmt: skip
        steps = self.steps
        for start in range(len(steps) - 1, -1, -1):
            if steps[start].base is ancestor.token:
                return _union(steps[start:])
        return None


def _union(steps: tuple[Step, ...]) -> Changes:
    if len(steps) == 1:
        (step,) = steps
        return Changes(
            part_buckets=step.part_buckets,
            override_buckets=step.override_buckets,
            arrays=step.arrays,
            pinned=step.pinned,
            member_hashes=step.member_hashes,
        )
    arrays: set[tuple[int, int]] | None = set()
    for step in steps:
        if step.arrays is None:
            arrays = None
            break
        assert arrays is not None
        arrays.update(step.arrays)
    return Changes(
        part_buckets=frozenset().union(*(step.part_buckets for step in steps)),
        override_buckets=frozenset().union(*(step.override_buckets for step in steps)),
        arrays=None if arrays is None else frozenset(arrays),
        pinned=frozenset().union(*(step.pinned for step in steps)),
        member_hashes=(
            frozenset()
            if arrays is None
            else frozenset().union(*(step.member_hashes for step in steps))
        ),
    )


def new_lineage() -> Lineage:
    """The lineage of a version built from scratch: no known ancestors."""
    return Lineage(token=object(), steps=())
