"""Collection order: the longest tests first (the seed corpus, then those marked `slow`), the rest
in file order. `make test` runs the suite in parallel workers (pytest-xdist), which take tests
in collection order: a long test begun last would leave one worker running it alone."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("seed_corpus") is not None:
            return 0
        return 1 if item.get_closest_marker("slow") is not None else 2

    items.sort(key=rank)
