"""The chunked per-server table: writes copy only their chunks, older tables never change."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forehand.placement._table import CHUNK_BITS, Table


@settings(max_examples=50, deadline=None)
@given(
    length=st.integers(0, 300),
    writes=st.lists(st.tuples(st.integers(0, 10**6), st.integers()), max_size=40),
)
def test_a_writer_equals_a_list_and_leaves_its_base_alone(
    length: int, writes: list[tuple[int, int]]
) -> None:
    """Any writes give the table a list would hold, the base keeps its values, and only the
    written chunks are new objects."""
    values = list(range(length))
    base = Table.of(values)
    writer = base.writer()
    expected = list(values)
    for position, value in writes:
        if length:
            writer[position % length] = value
            expected[position % length] = value
    table = writer.freeze()
    assert list(table) == expected and len(table) == length
    assert [table[index] for index in range(length)] == expected
    assert list(base) == values
    written = {(position % length) >> CHUNK_BITS for position, _ in writes} if length else set()
    changed = {start >> CHUNK_BITS for start, _, _ in base.chunk_pairs(table)}
    assert changed == written
    assert (table == Table.of(expected)) and (table == base) == (expected == values)


def test_reads_outside_the_table_are_refused() -> None:
    """Indexing past the end is a programmer error, caught by an assert."""
    table = Table.of(random.Random(1).sample(range(100), 10))
    with pytest.raises(AssertionError):
        table[10]
    with pytest.raises(AssertionError):
        table.writer()[-1] = 0
