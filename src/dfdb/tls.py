"""TLS options shared by the server backends, read from a database URL.

Every server driver takes the same options, with the same meaning:

``tls``
    ``true`` to connect with TLS (Redis: the ``rediss://`` scheme says it too).
``ca_file``
    PEM file of the certificate authorities to trust (default: the system's).
``cert_file``, ``key_file``
    PEM files of the client's certificate and private key, for servers that
    authenticate clients by certificate (both or neither).
``server_name``
    the name the server's certificate must carry, when it is not the host of the URL.
``verify``
    ``false`` to skip checking the server's certificate (development only; default ``true``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from dfdb.errors import InvalidURL
from dfdb.url import DatabaseURL

__all__ = ["TLS_OPTIONS", "TlsSettings", "describe_tls_failure", "tls_failure"]

TLS_OPTIONS = frozenset({"tls", "ca_file", "cert_file", "key_file", "server_name", "verify"})
"""The URL options :class:`TlsSettings` reads."""


@dataclass(frozen=True)
class TlsSettings:
    """A backend's TLS settings; see the module documentation for the URL options."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    verify: bool = True

    @classmethod
    def from_url(cls, url: DatabaseURL, *, enabled: bool = False) -> TlsSettings | None:
        """The settings of ``url``, or ``None`` when it does not ask for TLS.

        Args:
            url: the database URL.
            enabled: TLS is on whatever the ``tls`` option says (``rediss://``).

        Raises:
            InvalidURL: a TLS option without TLS, a certificate without its key (or the
                reverse), a file that cannot be read.
        """
        on = url.bool_option("tls", False) or enabled
        given = sorted(TLS_OPTIONS & set(url.options) - {"tls"})
        if not on:
            if given:
                raise InvalidURL(f"{', '.join(given)}: TLS options need tls=true (or rediss:// for Redis)")
            return None
        settings = cls(
            url.option("ca_file") or None,
            url.option("cert_file") or None,
            url.option("key_file") or None,
            url.option("server_name") or None,
            url.bool_option("verify", True),
        )
        if (settings.cert_file is None) != (settings.key_file is None):
            raise InvalidURL("cert_file and key_file go together: give both or neither")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(settings, name)
            if path is not None:
                settings.read(name)  # a missing file is a configuration mistake: said now
        settings.ssl_context()  # so is a file that is no certificate, or a key that does not fit
        return settings

    def read(self, name: str) -> bytes:
        """The contents of the file named by option ``name``.

        Raises:
            InvalidURL: it cannot be read.
        """
        path = getattr(self, name)
        try:
            return Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise InvalidURL(f"cannot read {name} {path!r}: {exc.strerror}") from None

    def ssl_context(self) -> ssl.SSLContext:
        """A client ``SSLContext`` with these settings.

        Raises:
            InvalidURL: a file is not a PEM certificate or key, the key does not fit the
                certificate, or the key is encrypted (never a prompt for its passphrase).
        """
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidURL(f"ca_file {self.ca_file!r} holds no PEM certificate: {_reason(exc)}") from None
        if self.cert_file is not None:

            def no_passphrase() -> str:
                raise InvalidURL(f"key_file {self.key_file!r} is encrypted: give an unencrypted key")

            try:
                context.load_cert_chain(self.cert_file, self.key_file, password=no_passphrase)
            except (ssl.SSLError, OSError) as exc:
                raise InvalidURL(
                    f"cert_file {self.cert_file!r} and key_file {self.key_file!r} are not a PEM certificate "
                    f"and its key: {_reason(exc)}"
                ) from None
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _reason(exc: ssl.SSLError | OSError) -> str:
    """The short reason of a failure to load a certificate or key."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return exc.strerror or str(exc)


def tls_failure(exc: BaseException | None) -> ssl.SSLError | None:
    """The TLS error at the root of ``exc`` (its causes and contexts), or ``None``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def describe_tls_failure(error: ssl.SSLError) -> str:
    """One line for a failed TLS handshake, with the likely fix."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"TLS: the server's certificate was not accepted ({error.verify_message}); check ca_file (and server_name)"
        )
    reason = error.reason or str(error)
    if reason == "WRONG_VERSION_NUMBER":
        return "TLS: the server does not speak TLS on this port"
    return f"TLS handshake failed: {reason}"
