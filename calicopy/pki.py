"""A small certificate authority for a calico-py cluster (``calicoctl certs``).

One CA signs every certificate. A certificate names one identity in its
subject's common name, which is what the services authorise on and what
etcd maps to its user of the same name:

- ``admin``: the operator (calicoctl);
- ``node:<name>``: one host's processes;
- ``scheduler:<name>``: an orchestrator that starts and stops workloads;
- ``service:<name>``: a server (the cluster services, etcd).

Every certificate is good for both ends of a connection (client and server
authentication) and lists the host names and addresses it may serve on.
Keys are ECDSA P-256 (fast to make, small, supported by gRPC and etcd). The
crypto is the ``cryptography`` package's; nothing here is hand-rolled.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from calicopy.errors import InvalidArgument

CA_NAME = "ca"
KINDS = ("node", "scheduler", "service")
_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?\Z")
DEFAULT_DAYS = 365
CA_DAYS = 3650


def check_identity(identity: str) -> str:
    """``admin``, ``node:<name>``, ``scheduler:<name>`` or ``service:<name>``."""
    kind, sep, name = identity.partition(":")
    if identity == "admin" or (sep and kind in KINDS and _NAME_RE.match(name)):
        return identity
    raise InvalidArgument(
        f"Invalid identity '{identity}': give admin, node:<name>, scheduler:<name> or "
        "service:<name> (names: letters, digits, '.', '-', '_').")


def file_stem(identity: str) -> str:
    """The file name an identity's certificate is kept under (``node:h1`` -> ``node-h1``)."""
    return identity.replace(":", "-")


def paths(folder: str | Path, identity: str) -> tuple[Path, Path]:
    """(certificate, key) of ``identity`` in ``folder``."""
    stem = CA_NAME if identity == CA_NAME else file_stem(identity)
    return Path(folder) / f"{stem}.pem", Path(folder) / f"{stem}-key.pem"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(days: int = CA_DAYS, name: str = "calico-py CA"
            ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(ca_cert: x509.Certificate, ca_key, identity: str, hosts: list[str] = (),
          days: int = DEFAULT_DAYS, not_before: datetime.datetime | None = None
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``identity``, valid for ``hosts`` (names and
    addresses) as a server; ``localhost`` and the loopback addresses always."""
    check_identity(identity)
    if days < 1:
        raise InvalidArgument(f"Invalid validity {days} days: give at least 1.")
    key = _new_key()
    start = not_before or _now() - datetime.timedelta(minutes=5)
    everywhere = list(dict.fromkeys(["localhost", "127.0.0.1", "::1", *hosts]))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                                  ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(_san(everywhere), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def identity_of(cert_pem: bytes) -> str:
    """The identity a certificate (PEM) names."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def describe(cert_pem: bytes) -> dict:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        hosts = []
    return {"identity": identity_of(cert_pem), "issuer": cert.issuer.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(), "hosts": hosts}


# Files ----------------------------------------------------------------------

def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (a reader never sees half a file) with ``mode``."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save(folder: str | Path, identity: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    cert_path, key_path = paths(folder, identity)
    _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def load_ca(folder: str | Path) -> tuple[x509.Certificate, object]:
    cert_path, key_path = paths(folder, CA_NAME)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"No CA in {folder} ({exc.filename} is missing); create one "
                              "with 'calicoctl certs ca'.") from None
    return cert, key


def ensure(folder: str | Path, identities: dict[str, list[str]]) -> None:
    """A CA in ``folder`` and a certificate per identity, made if missing, or
    issued again (for the union of its hosts) when it does not cover every
    host asked for: what the local stack, the demo and the tests use."""
    folder = Path(folder)
    if not paths(folder, CA_NAME)[0].exists():
        save(folder, CA_NAME, *make_ca())
    ca_cert = ca_key = None
    for identity, hosts in identities.items():
        cert_path = paths(folder, identity)[0]
        have = describe(cert_path.read_bytes())["hosts"] if cert_path.exists() else None
        if have is not None and all(_host_key(h) in map(_host_key, have) for h in hosts):
            continue
        if ca_cert is None:
            ca_cert, ca_key = load_ca(folder)
        save(folder, identity, *issue(ca_cert, ca_key, identity, list(have or []) + list(hosts)))


def _host_key(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()
