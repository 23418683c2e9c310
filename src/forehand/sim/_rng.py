"""One root seed drives every random choice of a run: child generators are derived by name.

Deriving a generator per component (`network`, `faults`, `node/s1/0`) keeps each component's stream
stable when another component draws more or fewer numbers, so a change in one place does not
reshuffle the whole run.
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["derive_rng", "derive_seed"]

_SEED_BYTES = 16
"""Width of the key fed to blake2b; roomy enough for any root seed a campaign uses."""


def derive_seed(root_seed: int, name: str) -> int:
    """A 64-bit seed for the component `name`, a pure function of the root seed and the name."""
    assert root_seed >= 0, "root seeds are non-negative integers"
    key = root_seed.to_bytes(_SEED_BYTES, "big")
    digest = hashlib.blake2b(name.encode("utf-8"), key=key, digest_size=8).digest()
    return int.from_bytes(digest, "big")


def derive_rng(root_seed: int, name: str) -> random.Random:
    """A fresh `random.Random` for the component `name`, seeded from the root seed."""
    return random.Random(derive_seed(root_seed, name))
