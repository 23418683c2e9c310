"""Fixtures of the operations tests: one live cluster with its admin API, shared by the module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.ops._ops_cluster import OpsCluster, make_certs
else:
    from _ops_cluster import OpsCluster, make_certs


@pytest.fixture(scope="session")
def ops_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsCluster]:
    """A manager with the admin API and dashboard, and three servers with /metrics."""
    directory: Path = tmp_path_factory.mktemp("ops-cluster")
    certs_dir = make_certs(directory / "certs")
    cluster = OpsCluster(directory, certs_dir=certs_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
