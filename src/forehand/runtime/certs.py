"""A cluster CA and per-node certificates for local use, made with `cryptography`.

TLS is always on in Forehand: every server proves its node id with a certificate issued by the
cluster CA, and cluster-internal links prove both ends. `make_cluster_certs` writes, into one
directory, `ca.pem` and `ca.key` (the cluster CA) and `<node>.pem` and `<node>.key` per node. A
node certificate names the node in its subject CN and in its subjectAltName (DNS:<node>, plus
DNS:localhost and IP:127.0.0.1 so that loopback tests and local clusters need no DNS). Keys are
ECDSA P-256, which both TLS 1.3 over TCP and the QUIC stacks handshake with quickly.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from forehand.errors import ConfigError

__all__ = [
    "CA_CERTIFICATE_FILE",
    "CA_KEY_FILE",
    "CERTIFICATE_DAYS_MAX",
    "ClusterCertificates",
    "NodeCertificate",
    "check_node_credentials",
    "make_cluster_certs",
    "node_certificate",
    "validate_node_name",
]

CA_CERTIFICATE_FILE = "ca.pem"
"""File name of the cluster CA certificate in a certificate directory."""
CA_KEY_FILE = "ca.key"
"""File name of the cluster CA private key in a certificate directory."""
CA_COMMON_NAME = "Forehand cluster CA"
"""Subject CN of the cluster CA."""
CERTIFICATE_DAYS_MAX = 3650
"""The longest validity `make_cluster_certs` issues, in days."""
NODE_NAME_BYTES_MAX = 64
"""Node names are server ids on the wire, which are at most 64 bytes (docs/PROTOCOL.md s.2.2)."""
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(minutes=5)
"""Certificates start this long before now, so that peers with a slow clock accept them."""
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_PRIVATE_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCertificate:
    """Where one node's certificate and key were written."""

    node: str
    """The node id, the certificate's subject CN and first DNS subjectAltName."""
    certificate_path: Path
    """The node certificate (PEM)."""
    key_path: Path
    """The node's private key (PEM, PKCS#8, unencrypted, mode 0600)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterCertificates:
    """What `make_cluster_certs` wrote."""

    directory: Path
    """The directory holding every file."""
    ca_certificate_path: Path
    """The cluster CA certificate (PEM); every peer verifies against it."""
    ca_key_path: Path
    """The cluster CA private key (PEM, mode 0600); needed only to issue more certificates."""
    nodes: tuple[NodeCertificate, ...]
    """One entry per node, in the order given."""

    def node(self, name: str) -> NodeCertificate:
        """The files of node `name`."""
        for entry in self.nodes:
            if entry.node == name:
                return entry
        raise KeyError(name)


def validate_node_name(name: str) -> str:
    """Return `name` if it can be a node id and a DNS name in a certificate, else raise ConfigError.

    A node name is a server id on the wire and a DNS subjectAltName: dot-separated labels of
    letters, digits and hyphens, at most 64 bytes, whose last label is not all digits.
    """
    labels = name.split(".")
    if (
        not name
        or len(name.encode()) > NODE_NAME_BYTES_MAX
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ConfigError(
            f"node name {name!r} must be 1 to {NODE_NAME_BYTES_MAX} bytes of dot-separated "
            "labels of letters, digits and hyphens (not starting or ending with a hyphen), "
            "whose last label is not all digits"
        )
    return name


def node_certificate(directory: Path, node: str) -> NodeCertificate:
    """The paths of node `node`'s certificate and key in a certificate directory."""
    validate_node_name(node)
    return NodeCertificate(
        node=node,
        certificate_path=directory / f"{node}.pem",
        key_path=directory / f"{node}.key",
    )


def check_node_credentials(directory: Path, node: str) -> None:
    """Refuse, naming the file, key material that a TLS context would reject later with an
    opaque error: a CA or node certificate that is not PEM, a key that is not an unencrypted PEM
    private key or does not match its certificate, a node certificate the cluster CA did not
    issue or whose validity has ended. Missing node files are left to the process, which says
    which command makes them."""
    authorities = _read_certificates(directory / CA_CERTIFICATE_FILE)
    entry = node_certificate(directory, node)
    if not (entry.certificate_path.is_file() and entry.key_path.is_file()):
        return
    certificate = _read_certificates(entry.certificate_path)[0]
    if not _is_key_of(_read_private_key(entry.key_path), certificate):
        raise ConfigError(f"{entry.key_path} is not the key of {entry.certificate_path}")
    if not any(_issued_by(certificate, authority) for authority in authorities):
        raise ConfigError(
            f"{entry.certificate_path} was not issued by the cluster CA in "
            f"{directory / CA_CERTIFICATE_FILE}"
        )
    ends = certificate.not_valid_after_utc
    if ends <= datetime.datetime.now(datetime.UTC):
        raise ConfigError(
            f"{entry.certificate_path} expired at {ends:%Y-%m-%d %H:%M} UTC: "
            f"run `forehand certs {directory} {node}`"
        )


def check_tls_files(
    ca_path: Path | None, certificate_path: Path | None, key_path: Path | None, *, what: str
) -> None:
    """Refuse, naming the setting and the file, TLS files that a TLS context would reject later
    with an opaque error (the etcd client's, say): a CA or certificate that is not PEM, a key
    that is not an unencrypted PEM private key or not the certificate's."""
    if ca_path is not None:
        _read_certificates(ca_path, what=f"{what}_ca")
    if certificate_path is None or key_path is None:
        return
    certificate = _read_certificates(certificate_path, what=f"{what}_certificate")[0]
    if not _is_key_of(_read_private_key(key_path, what=f"{what}_private_key"), certificate):
        raise ConfigError(
            f"{what}_private_key {key_path} is not the key of {what}_certificate {certificate_path}"
        )


def _read_certificates(path: Path, *, what: str = "") -> list[x509.Certificate]:
    where = f"{what} {path}" if what else str(path)
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as error:
        raise ConfigError(f"cannot read {where}: {error}") from error
    except ValueError as error:
        raise ConfigError(f"{where} is not a PEM certificate: {error}") from error


def _read_private_key(path: Path, *, what: str = "") -> PrivateKeyTypes:
    where = f"{what} {path}" if what else str(path)
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise ConfigError(f"cannot read {where}: {error}") from error
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ConfigError(f"{where} is not an unencrypted PEM private key: {error}") from error


def _is_key_of(key: PrivateKeyTypes, certificate: x509.Certificate) -> bool:
    """Whether `key` is the private half of `certificate`'s public key."""
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*spki) == certificate.public_key().public_bytes(*spki)


def _issued_by(certificate: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def make_cluster_certs(
    directory: Path | str, nodes: Sequence[str], days: int = 365
) -> ClusterCertificates:
    """Write a cluster CA and one certificate per node into `directory`; return the paths.

    An existing CA in `directory` (`ca.pem` and `ca.key`) is reused, so that nodes can be added to
    a cluster later; otherwise a new one is made. Node certificates are always issued afresh,
    with new keys. `days` is the validity of new certificates, 1 to CERTIFICATE_DAYS_MAX.
    """
    if not 1 <= days <= CERTIFICATE_DAYS_MAX:
        raise ConfigError(f"days must be 1 to {CERTIFICATE_DAYS_MAX}, got {days}")
    names = [validate_node_name(node) for node in nodes]
    if not names:
        raise ConfigError("at least one node name is required")
    if len(set(names)) != len(names):
        raise ConfigError(f"node names must be distinct, got {names}")
    if "ca" in names:
        raise ConfigError("'ca' is reserved for the cluster CA's files")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - CLOCK_SKEW_ALLOWANCE, now + datetime.timedelta(days=days))
    ca_certificate, ca_key = _load_or_make_ca(path, validity)
    written = []
    for name in names:
        entry = node_certificate(path, name)
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _node_certificate(name, key, ca_certificate, ca_key, validity)
        _write_private_key(entry.key_path, key)
        entry.certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        written.append(entry)
    return ClusterCertificates(
        directory=path,
        ca_certificate_path=path / CA_CERTIFICATE_FILE,
        ca_key_path=path / CA_KEY_FILE,
        nodes=tuple(written),
    )


def _load_or_make_ca(
    path: Path, validity: tuple[datetime.datetime, datetime.datetime]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the CA in `path`, or make and write one when there is none."""
    certificate_path = path / CA_CERTIFICATE_FILE
    key_path = path / CA_KEY_FILE
    if certificate_path.exists() and key_path.exists():
        certificate = _read_certificates(certificate_path)[0]
        key = _read_private_key(key_path)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path} is not an elliptic-curve key")
        return certificate, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(certificate_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private_key(key_path, key)
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return certificate, key


def _node_certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    validity: tuple[datetime.datetime, datetime.datetime],
) -> x509.Certificate:
    """A certificate for node `name`, usable as TLS server and as TLS client."""
    alternative_names: list[x509.GeneralName] = [
        x509.DNSName(name),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    public_key = key.public_key()
    ca_key_identifier = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(min(validity[1], ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(certificate_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_identifier),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(*, certificate_sign: bool) -> x509.KeyUsage:
    """Key usage of a CA (signs certificates) or of a node (signs handshakes)."""
    return x509.KeyUsage(
        digital_signature=not certificate_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=certificate_sign,
        crl_sign=certificate_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a key readable by its owner only; the file is created with that mode."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE_FILE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.chmod(path, _PRIVATE_FILE_MODE)
