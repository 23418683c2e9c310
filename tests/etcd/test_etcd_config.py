"""Configuration of managers on etcd and of servers with several manager endpoints: what is
accepted, and bad values refused with an error naming them."""

from __future__ import annotations

from pathlib import Path

import pytest

from forehand.errors import ConfigError
from forehand.runtime import make_cluster_certs
from forehand.runtime._leader import etcd_config
from forehand.runtime.config import load_manager_config, load_server_config


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    make_cluster_certs(directory, ("manager",), days=1)
    return directory


def test_an_etcd_store_url_with_tls_files(certs: Path) -> None:
    """An etcd:// store names endpoints and a prefix; the TLS files reach the etcd client."""
    config = load_manager_config(
        None,
        {
            "certs_dir": str(certs),
            "store": "etcd://10.0.0.1:2379,10.0.0.2:2379/shop",
            "etcd_ca": str(certs / "ca.pem"),
            "etcd_certificate": str(certs / "manager.pem"),
            "etcd_private_key": str(certs / "manager.key"),
            "lease_ttl_s": 3,
            "etcd_value_bytes_max": 4_000_000,
        },
    )
    etcd = etcd_config(config)
    assert etcd.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert etcd.prefix == "/shop" and etcd.leader_key == "/shop/leader"
    assert etcd.ca_path == certs / "ca.pem" and etcd.private_key_path == certs / "manager.key"
    assert config.lease_ttl_s == 3 and etcd.value_bytes_max == 4_000_000


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"store": "etcd://"}, "endpoint"),
        ({"store": "etcd://host"}, "host:port"),
        ({"store": "redis://h:1"}, "store"),
        ({"store": "etcd://h:1", "etcd_certificate": "c.pem"}, "together"),
        ({"store": "etcd://h:1", "lease_ttl_s": 0}, "lease_ttl_s"),
        ({"store": "etcd://h:1", "etcd_value_bytes_max": 0}, "value_bytes_max"),
    ],
)
def test_bad_etcd_settings_are_refused(
    certs: Path, overrides: dict[str, object], named: str
) -> None:
    """A malformed URL, an unknown store, a certificate without its key or a zero lease is a
    ConfigError that says which."""
    with pytest.raises(ConfigError, match=named):
        load_manager_config(None, {"certs_dir": str(certs), **overrides})


def test_servers_take_several_manager_endpoints(certs: Path) -> None:
    """`manager` may list several host:port, comma-separated; one malformed entry is refused."""
    base = {"server_id": "s1", "certs_dir": str(certs), "app": "examples.cart.app:app"}
    config = load_server_config(None, {**base, "manager": "127.0.0.1:7000, 127.0.0.1:7001"})
    assert config.manager == "127.0.0.1:7000, 127.0.0.1:7001"
    with pytest.raises(ConfigError, match="manager"):
        load_server_config(None, {**base, "manager": "127.0.0.1:7000,nowhere"})
