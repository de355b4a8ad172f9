"""TLS credentials for gRPC servers and clients, re-read when their files change.

A process is given three files (CA, certificate, key), e.g. through
``CALICO_TLS_CA_FILE``, ``CALICO_TLS_CERT_FILE`` and ``CALICO_TLS_KEY_FILE``.
Servers require a client certificate signed by the CA (mutual TLS);
clients present theirs and check the server's against the CA.

Rotation needs no restart: a server's credentials are fetched again for each
new connection and re-read when any of the files changed (gRPC's dynamic
server credentials); a client compares the files' stamps before a call and
opens a new channel when they changed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path

import grpc

from calicopy.config import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def of(cls, ca: str | Path, cert: str | Path, key: str | Path) -> "TlsFiles":
        return cls(Path(ca), Path(cert), Path(key))

    def stamp(self) -> tuple:
        """Changes whenever any of the files is replaced or rewritten."""
        out = []
        for path in (self.ca, self.cert, self.key):
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) as bytes; a missing or unreadable file is a
        ConfigError naming it."""
        data = []
        for what, path in (("CA certificate", self.ca), ("certificate", self.cert),
                           ("key", self.key)):
            try:
                data.append(path.read_bytes())
            except OSError as exc:
                raise ConfigError(f"Cannot read the TLS {what} {path}: "
                                  f"{exc.strerror or exc}.") from None
        return data[0], data[1], data[2]

    @property
    def identity(self) -> str:
        from calicopy.pki import identity_of     # cryptography only when asked
        return identity_of(self.read()[1])


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Mutual TLS, with the files re-read when they change."""
    ca, cert, key = files.read()
    state = {"stamp": files.stamp()}
    lock = threading.Lock()

    def configuration(ca, cert, key):
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch():
        with lock:
            stamp = files.stamp()
            if stamp == state["stamp"]:
                return None                     # unchanged: keep the current one
            try:
                fresh = files.read()
            except ConfigError as exc:          # mid-rotation: keep serving the old one
                log.warning("%s", exc)
                return None
            state["stamp"] = stamp
            log.info("TLS certificate %s reloaded", files.cert)
            return configuration(*fresh)

    return grpc.dynamic_ssl_server_credentials(configuration(ca, cert, key), fetch,
                                               require_client_authentication=True)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


@dataclasses.dataclass(frozen=True)
class Security:
    """How a process serves and calls TCP ports: with ``tls``, or (only with
    ``insecure``, for throw-away labs) in plaintext. Unix sockets need neither:
    only root can open them."""

    tls: TlsFiles | None = None
    insecure: bool = False

    @classmethod
    def from_env(cls, environ=None, ca=None, cert=None, key=None,
                 insecure: bool | None = None) -> "Security":
        from calicopy import config
        files = config.tls_files(ca, cert, key, environ)
        if insecure is None:
            insecure = config.INSECURE.resolve(environ=environ)
        return cls(files, bool(insecure))

    def refuse_plaintext(self, target: str, role: str) -> ConfigError:
        return ConfigError(
            f"Refusing to {role} {target} without TLS: any local user reaches a plaintext "
            "port, even on loopback. Give the CA, certificate and key (CALICO_TLS_CA_FILE, "
            "CALICO_TLS_CERT_FILE, CALICO_TLS_KEY_FILE; 'calicoctl certs' makes them), or "
            "CALICO_INSECURE=1 / --insecure for a throw-away lab.")
