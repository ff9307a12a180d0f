"""TLS options shared by the server backends, read from a database URL.

Every server driver takes the same options, with the same meaning:

``tls``
    ``true`` to connect with TLS (Redis: the ``rediss://`` scheme says it too, and
    ``tls=false`` with it is refused as a contradiction).
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

import asyncio
import contextlib
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dfdb.errors import InvalidURL
from dfdb.url import DatabaseURL

__all__ = [
    "TLS_OPTIONS",
    "TlsSettings",
    "describe_tls_failure",
    "grpc_tls_refusal",
    "permanent_tls_failure",
    "protocol_mismatch",
    "tls_failure",
    "tls_wanted",
]

TLS_OPTIONS = frozenset({"tls", "ca_file", "cert_file", "key_file", "server_name", "verify"})
"""The URL options :class:`TlsSettings` reads."""


def tls_wanted(url: DatabaseURL, by_scheme: bool = False) -> bool:
    """Whether ``url`` asks for TLS: by its scheme (``by_scheme``: ``rediss://``) or by its
    ``tls`` option.

    Raises:
        InvalidURL: the scheme means TLS and the ``tls`` option turns it off.
    """
    on = url.bool_option("tls", by_scheme)
    if by_scheme and not on:
        plain = url.scheme.replace("rediss", "redis", 1)
        raise InvalidURL(
            f"tls={url.options['tls']} contradicts {url.scheme}://, which always connects with TLS: "
            f"drop tls=, or use {plain}:// for a plain connection"
        )
    return on


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
        on = tls_wanted(url, enabled)
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
    refusal = _CLIENT_CERT_ALERTS.get(reason)
    if refusal is not None:
        return f"TLS: the server refused the client certificate ({refusal}); check cert_file and key_file"
    return f"TLS handshake failed: {reason}"


_CLIENT_CERT_ALERTS = {
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "it has expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "expired, or signed by a CA it does not trust",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "it was revoked",
    "TLSV1_ALERT_UNKNOWN_CA": "signed by a CA it does not trust",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "none was given and it requires one",
}
"""The server's TLS alerts about the client's certificate -> what they mean."""


def permanent_tls_failure(error: ssl.SSLError) -> bool:
    """Whether a failed handshake is one that retrying cannot mend: a certificate refused
    by either side (expired, untrusted, the wrong name, missing)."""
    return isinstance(error, ssl.SSLCertVerificationError) or error.reason in _CLIENT_CERT_ALERTS


async def protocol_mismatch(
    hosts: Iterable[tuple[str, int]], *, tls: bool, request: bytes, answers: tuple[bytes, ...], within: float = 2.0
) -> str | None:
    """Why a connection failed when the port speaks the other protocol, else ``None``.

    Asked once a connection failed: with ``tls``, whether a server answers ``request``
    without TLS by a reply starting with one of ``answers`` (it does not speak TLS); without,
    whether it completes a TLS handshake (it speaks TLS only). Each probe waits at most
    ``within`` seconds.
    """
    for host, port in hosts:
        if tls and await _answers_plain(host, port, request, answers, within):
            return "TLS: the server does not speak TLS on this port (it answers without TLS)"
        if not tls and await _speaks_tls(host, port, within):
            return (
                "the server speaks TLS only on this port: connect with TLS (tls=true, or rediss:// for Redis) "
                "and its ca_file"
            )
    return None


async def _answers_plain(host: str, port: int, request: bytes, answers: tuple[bytes, ...], within: float) -> bool:
    writer = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            reply = await reader.read(64)
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.transport.abort()
    return reply.startswith(answers)


_PROBE: ssl.SSLContext | None = None


def _probe_context() -> ssl.SSLContext:
    """One context for every probe of the process, verifying nothing (only: does the port
    speak TLS?): without the system's CA bundle, which costs tens of milliseconds of CPU to
    load, and a fleet of clients opening at once under load probes after each time-out."""
    global _PROBE
    if _PROBE is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        _PROBE = context
    return _PROBE


async def _speaks_tls(host: str, port: int, within: float) -> bool:
    context = _probe_context()
    writer = None
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port, ssl=context, ssl_handshake_timeout=within)
    except ssl.SSLError as exc:  # an alert from the server is TLS too
        return "ALERT" in (exc.reason or "")
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.transport.abort()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    return True


def grpc_tls_refusal(details: str | None) -> str | None:
    """What went wrong when a gRPC failure (its details) is a TLS handshake that retrying
    cannot mend; ``None`` when it is not one."""
    text = (details or "").upper()
    if "CERTIFICATE_VERIFY_FAILED" in text or "HOSTNAME VERIFICATION CHECK FAILED" in text:
        why = re.search(r"CERTIFICATE_VERIFY_FAILED: ([^:]+)", details or "")  # "certificate has expired"
        return (
            f"the server's certificate was not accepted{f' ({why[1]})' if why else ''}; check ca_file (and server_name)"
        )
    if "TSI_DATA_CORRUPTED" in text or "CERTIFICATE_REQUIRED" in text:
        return "the server refused the connection; it may need a client certificate it trusts (cert_file, key_file)"
    if "WRONG_VERSION_NUMBER" in text:
        return "the server does not speak TLS on this port"
    return None
