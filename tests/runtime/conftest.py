"""Fixtures of runtime tests: a cluster's certificates and another cluster's, in temp dirs."""

from __future__ import annotations

import pytest

from forehand.runtime import ClusterCertificates, make_cluster_certs

NODES = ("s1", "s2", "manager", "client-node")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ClusterCertificates:
    """A cluster CA with certificates for NODES."""
    return make_cluster_certs(tmp_path_factory.mktemp("cluster"), NODES, days=2)


@pytest.fixture(scope="session")
def foreign_certs(tmp_path_factory: pytest.TempPathFactory) -> ClusterCertificates:
    """Another cluster's CA, with certificates for nodes that are also called s1, client-node."""
    return make_cluster_certs(tmp_path_factory.mktemp("foreign"), ["s1", "client-node"], days=2)
