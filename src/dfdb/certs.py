"""A local certificate authority for development servers (``dfdb server run --tls``).

Makes, in a folder, a CA and a server and a client certificate signed by it, as PEM
files. The server certificate names ``localhost`` and ``127.0.0.1``. Needs the
``cryptography`` package (``pip install dfdb[tls]``). Not for production: the keys
are written unencrypted.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfdb.errors import MissingDependencyError

__all__ = ["LocalCA", "make_local_ca"]


@dataclass(frozen=True)
class LocalCA:
    """The PEM files of a local CA and of the certificates it signed."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def url_options(self, *, client: bool = True) -> str:
        """The URL options that trust this CA (and present the client certificate)."""
        text = f"ca_file={self.ca_file}"
        if client:
            text += f"&cert_file={self.client_cert}&key_file={self.client_key}"
        return text


def make_local_ca(
    folder: Path, *, name: str = "dfdb", days: int = 30, expired: bool = False, expired_client: bool = False
) -> LocalCA:
    """Write a CA, a server and a client certificate into ``folder``.

    Args:
        folder: where the PEM files go (created if missing).
        name: a word put in the certificates' names.
        days: how long the certificates are valid.
        expired: make server and client certificates that expired yesterday (for tests).
        expired_client: make only the client certificate one that expired yesterday (for tests).

    Raises:
        MissingDependencyError: ``cryptography`` is not installed.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise MissingDependencyError(
            "making TLS certificates needs cryptography. Install it with: pip install 'dfdb[tls]'"
        ) from None
    import ipaddress

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days))
    past = (now - datetime.timedelta(days=2), now - datetime.timedelta(days=1))

    def key() -> Any:
        return ec.generate_private_key(ec.SECP256R1())

    def write(path: Path, data: bytes) -> Path:
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def key_pem(k: Any) -> bytes:
        return bytes(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} local CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usages: list[Any], names: list[Any], *, gone: bool) -> tuple[bytes, bytes]:
        start, end = past if gone else valid
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(k)

    server = leaf(
        "localhost",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],  # etcd dials itself with it
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        gone=expired,
    )
    client = leaf(f"{name}-client", [ExtendedKeyUsageOID.CLIENT_AUTH], [], gone=expired or expired_client)
    return LocalCA(
        write(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        write(folder / "server.pem", server[0]),
        write(folder / "server-key.pem", server[1]),
        write(folder / "client.pem", client[0]),
        write(folder / "client-key.pem", client[1]),
    )
