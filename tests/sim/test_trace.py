"""The trace digest: batched hashing equals hashing every line, and unstable reprs are refused."""

from __future__ import annotations

import hashlib

import pytest

from forehand.errors import ConfigError
from forehand.sim._trace import TraceDigest


def test_digest_is_the_hash_of_all_lines_whatever_the_batching() -> None:
    """Flushing in batches gives the same digest as hashing each line once."""
    batched = TraceDigest()
    for number in range(5):
        batched.pending.append(f"line {number}")
        if number == 2:
            batched.flush()
    expected = hashlib.blake2b(digest_size=16)
    expected.update(b"line 0\nline 1\nline 2\n")
    expected.update(b"line 3\nline 4\n")
    assert batched.hexdigest() == expected.hexdigest()
    assert batched.line_count == 5


def test_object_addresses_are_refused() -> None:
    """A line showing an object address would differ between processes; it is refused."""
    trace = TraceDigest()
    trace.pending.append(f"0 m a b {object()!r}")
    with pytest.raises(ConfigError, match="no stable repr"):
        trace.flush()
