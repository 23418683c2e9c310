"""`make_cluster_certs`: a cluster CA and node certificates that verify."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from forehand.errors import ConfigError
from forehand.runtime.certs import make_cluster_certs, validate_node_name


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_node_certificates_chain_to_the_ca_and_name_the_node(tmp_path: Path) -> None:
    """Each node certificate is signed by the CA and names the node in CN and SAN."""
    written = make_cluster_certs(tmp_path, ["manager", "s1"], days=30)
    ca = load(written.ca_certificate_path)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for node in ("manager", "s1"):
        certificate = load(written.node(node).certificate_path)
        certificate.verify_directly_issued_by(ca)
        common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert [name.value for name in common_names] == [node]
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [node, "localhost"]
        assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in usages
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
        lifetime = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        assert datetime.timedelta(days=29) < lifetime <= datetime.timedelta(days=30)
        assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)


def test_keys_are_private_to_their_owner(tmp_path: Path) -> None:
    """Private keys are written with mode 0600."""
    written = make_cluster_certs(tmp_path, ["s1"])
    for path in (written.ca_key_path, written.node("s1").key_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_existing_ca_is_reused_for_new_nodes(tmp_path: Path) -> None:
    """A second run in the same directory signs new nodes with the same CA."""
    first = make_cluster_certs(tmp_path, ["s1"])
    ca_before = first.ca_certificate_path.read_bytes()
    second = make_cluster_certs(tmp_path, ["s2"])
    assert second.ca_certificate_path.read_bytes() == ca_before
    load(second.node("s2").certificate_path).verify_directly_issued_by(
        load(first.ca_certificate_path)
    )


@pytest.mark.parametrize(
    "nodes",
    [[], ["s1", "s1"], ["bad name"], ["-s1"], ["s1."], ["10.0.0.1"], ["x" * 65], ["ca"]],
    ids=["none", "duplicate", "space", "hyphen", "trailing-dot", "ip", "long", "reserved"],
)
def test_invalid_node_lists_are_refused(tmp_path: Path, nodes: list[str]) -> None:
    """Empty, repeated, non-DNS, numeric, over-long and reserved names are ConfigError."""
    with pytest.raises(ConfigError):
        make_cluster_certs(tmp_path, nodes)


@pytest.mark.parametrize("days", [0, 3651])
def test_validity_is_bounded(tmp_path: Path, days: int) -> None:
    """Validity outside 1..3650 days is refused."""
    with pytest.raises(ConfigError):
        make_cluster_certs(tmp_path, ["s1"], days=days)


def test_dotted_names_are_valid() -> None:
    """Names may be DNS names with several labels."""
    assert validate_node_name("edge-eu-1a-07.example") == "edge-eu-1a-07.example"
