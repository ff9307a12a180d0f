"""Database URLs: parsed once, several hosts allowed, password masked."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, quote, unquote

from dfdb.errors import ConfigurationError, InvalidURL

__all__ = [
    "MAX_COUNT",
    "MAX_POLL_INTERVAL",
    "MAX_SECONDS",
    "PASSWORD_ENV",
    "DatabaseURL",
    "Secret",
    "missing_credential",
    "read_password_file",
]

PASSWORD_ENV = "DFDB_PASSWORD"
"""The environment variable that gives the password when a URL names a user but no password."""

MAX_SECONDS = 86_400.0
"""The longest duration an option takes unless it says otherwise (a day): a longer poll
interval, timeout or wait is a typing mistake (``1e12``), not a setting."""

MAX_POLL_INTERVAL = 3_600.0
"""The longest ``poll_interval`` (an hour): polled less often, a watch is no change stream."""

MAX_COUNT = 2**31 - 1
"""The largest count an option takes unless it says otherwise."""

_PASSWORD_FILE_LIMIT = 4096
"""The most characters a ``password_file`` may hold."""

_SECRET_OPTIONS = frozenset({"password", "secret", "token"})
"""Option names whose values ``render`` masks, as well as any name ending in ``password``
(dfdb takes only ``sentinel_password`` of them; a driver refuses the others)."""


class Secret:
    """A credential whose ``repr`` and ``str`` are masked; :meth:`reveal` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret's value, for the client library that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not pickled")


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL such as ``etcd://user:pw@h1:2379,h2:2379/prefix?timeout=3``.

    Attributes:
        scheme: the driver's scheme (``memory``, ``sqlite``, ``redis`` …).
        hosts: ``(host, port)`` pairs; ``port`` is ``None`` when not given.
        username: the user name, or ``None``.
        password: the password, or ``None``; never shown by ``repr`` or ``str``.
        path: the part after the hosts, without the leading ``/``.
        options: the query string as a mapping of strings.
    """

    scheme: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    path: str = ""
    options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str | DatabaseURL) -> DatabaseURL:
        """Parse ``url``.

        Raises:
            InvalidURL: the text is not a URL dfdb understands.
        """
        if isinstance(url, DatabaseURL):
            return url
        if not isinstance(url, str) or "://" not in url:
            raise InvalidURL(f"not a database URL (expected scheme://…): {_mask_text(str(url))!r}")
        scheme, rest = url.split("://", 1)
        if not scheme or not all(c.isalnum() or c in "+-." for c in scheme):
            raise InvalidURL(f"bad scheme in database URL: {scheme!r}")
        # the authority ends at the first '/', '?' or '#'; an '@' after it means a user name
        # or password with one of them unescaped (or an unescaped '@' in the path or options):
        # guessing could connect somewhere else with the password as a host name
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        if end > 0 and "@" in rest[end:]:
            raise InvalidURL(
                f"cannot parse the {scheme}:// URL (not shown: it may hold a password): "
                "percent-encode '/', '?', '#' and '@' in the user name and password "
                "(%2F, %3F, %23, %40) and any '@' in the path or options"
            )
        rest, _, query = rest.partition("?")
        rest = rest.partition("#")[0]
        netloc, slash, path = rest.partition("/")
        username = password = None
        if "@" in netloc:
            userinfo, netloc = netloc.rsplit("@", 1)
            user, _, pw = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(pw) if pw else None
        hosts: list[tuple[str, int | None]] = []
        for hostport in filter(None, netloc.split(",")):
            host, port = _split_hostport(hostport)
            hosts.append((host, port))
        options: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name in options:  # which one was meant? (the values are not shown: they may be secrets)
                raise InvalidURL(f"option {name} is given twice in the {scheme}:// URL: give it once")
            options[name] = value
        return cls(scheme.lower(), tuple(hosts), username, password, unquote(path) if slash else "", options)

    def option(self, name: str, default: str | None = None) -> str | None:
        """The raw text of option ``name``, or ``default``."""
        return self.options.get(name, default)

    def int_option(self, name: str, default: int, *, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
        """Option ``name`` as an integer from ``minimum`` to ``maximum``.

        Raises:
            InvalidURL: the value is not such an integer; the message names the option
                and the range.
        """
        raw = self.options.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidURL(f"option {name}={raw!r} is not an integer (from {minimum} to {maximum})") from None
        if not minimum <= value <= maximum:
            raise InvalidURL(f"option {name}={raw} is out of range: it must be from {minimum} to {maximum}")
        return value

    def float_option(
        self, name: str, default: float, *, minimum: float = 0.0, maximum: float = MAX_SECONDS, positive: bool = False
    ) -> float:
        """Option ``name`` as a duration: a finite number of seconds from ``minimum`` (above
        it when ``positive``) to ``maximum``.

        Raises:
            InvalidURL: the value is not such a number (``nan`` and ``inf`` are refused);
                the message names the option and the range.
        """
        raw = self.options.get(name)
        if raw is None:
            return default
        allowed = _range_text(minimum, maximum, positive)
        try:
            value = float(raw)
        except ValueError:
            raise InvalidURL(f"option {name}={raw!r} is not a number ({allowed})") from None
        if not _in_range(value, minimum, maximum, positive):
            raise InvalidURL(f"option {name}={raw} is out of range: it must be {allowed}")
        return value

    def without_options(self, *names: str) -> DatabaseURL:
        """A copy without the options ``names``."""
        opts = {k: v for k, v in self.options.items() if k not in names}
        return DatabaseURL(self.scheme, self.hosts, self.username, self.password, self.path, opts)

    def bool_option(self, name: str, default: bool) -> bool:
        """Option ``name`` as a boolean (``true``/``false``, ``yes``/``no``, ``1``/``0``, ``on``/``off``).

        Raises:
            InvalidURL: the value is none of those.
        """
        raw = self.options.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise InvalidURL(f"option {name}={raw!r} must be true or false")

    @property
    def secret(self) -> Secret | None:
        """The password as a :class:`Secret` (masked ``repr``), or ``None``."""
        return None if self.password is None else Secret(self.password)

    def with_credentials(self, environ: Mapping[str, str] | None = None) -> DatabaseURL:
        """This URL with its password taken from where it is kept outside the URL.

        The option ``password_file=PATH`` reads the password from that file (one
        trailing newline dropped) and is removed from the options; otherwise, when the
        URL names a user but no password, the environment variable ``DFDB_PASSWORD``
        gives it. Neither shows in ``ps`` or a shell's history, as a URL would.

        Raises:
            InvalidURL: both a password and ``password_file`` are given, or the file
                cannot be read, is empty or is too large to hold a password.
        """
        environ = os.environ if environ is None else environ
        url = self
        path = self.options.get("password_file")
        if path is not None:
            if self.password is not None:
                raise InvalidURL("give the password either in the URL or in password_file=, not both")
            url = replace(self.without_options("password_file"), password=read_password_file(path))
        elif self.password is None and self.username is not None and environ.get(PASSWORD_ENV):
            url = replace(self, password=environ[PASSWORD_ENV])
        return url

    def render(self, *, mask: bool = True) -> str:
        """The URL as text; the password shows as ``***`` unless ``mask`` is false."""
        auth = ""
        if self.username or self.password:
            auth = quote(self.username or "", safe="")
            if self.password:
                auth += ":" + ("***" if mask else quote(self.password, safe=""))
            auth += "@"
        hosts = ",".join(h if p is None else f"{_host_text(h)}:{p}" for h, p in self.hosts)
        text = f"{self.scheme}://{auth}{hosts}"
        if self.path or self.scheme == "sqlite":
            text += "/" + self.path
        if self.options:
            text += "?" + "&".join(f"{k}={'***' if mask and _secret_option(k) else v}" for k, v in self.options.items())
        return text

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        options = {k: "***" if _secret_option(k) else v for k, v in self.options.items()}
        return (
            f"DatabaseURL(scheme={self.scheme!r}, hosts={self.hosts!r}, username={self.username!r}, "
            f"path={self.path!r}, options={options!r})"
        )


def read_password_file(path: str, option: str = "password_file") -> str:
    """The password kept in the file ``path`` (one trailing newline dropped), named by
    the URL option ``option``.

    Raises:
        InvalidURL: the file cannot be read, is empty or is too large to hold a password.
    """
    try:
        # without waiting: a named pipe nobody writes would block open() for ever
        with open(os.path.expanduser(path), "rb", opener=_open_without_waiting) as file:
            data = file.read(4 * _PASSWORD_FILE_LIMIT + 1) or b""  # bounded: /dev/zero is a path too
        if len(data) > 4 * _PASSWORD_FILE_LIMIT:  # a UTF-8 character takes at most 4 bytes
            raise InvalidURL(f"{option} {path!r} is not a password: more than {_PASSWORD_FILE_LIMIT} characters")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidURL(f"cannot read {option} {path!r}: {reason}") from None
    if len(text) > _PASSWORD_FILE_LIMIT:
        raise InvalidURL(f"{option} {path!r} is not a password: more than {_PASSWORD_FILE_LIMIT} characters")
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:  # an unfilled secret mount, most likely: not an empty password
        raise InvalidURL(f"{option} {path!r} is empty")
    return text


def _open_without_waiting(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def _secret_option(name: str) -> bool:
    """Whether option ``name`` holds a secret (``password``, ``sentinel_password`` …)."""
    name = name.lower()
    return name in _SECRET_OPTIONS or name.endswith("password")


def missing_credential(url: DatabaseURL) -> str | None:
    """What is missing when ``url`` names a user without a password or the reverse, else ``None``."""
    if url.username is not None and url.password is None:
        return (
            f"{url.scheme}:// names the user {url.username!r} but no password: give it in the URL "
            f"(percent-encoded), in password_file=PATH or in the environment variable {PASSWORD_ENV}"
        )
    if url.username is None and url.password is not None:
        return f"{url.scheme}:// gives a password but no user name"
    return None


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _split_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise InvalidURL(f"bad host in database URL: {text!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        return host, None
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidURL(f"bad port in database URL: {port_text!r}") from None
    if not 0 < port < 65536:
        raise InvalidURL(f"port out of range in database URL: {port}")
    return host, port


def _mask_text(text: str) -> str:
    """``text`` (not a URL dfdb understands) with anything that may be a password hidden."""
    if "@" in text or ":" in text:
        return "(not shown: it may hold a password)"
    return text


def positive_seconds(name: str, value: float, maximum: float = MAX_SECONDS) -> float:
    """``value`` as a duration in seconds, above 0 and at most ``maximum``.

    Raises:
        ConfigurationError: it is not such a number (``nan``, infinite, zero, negative,
            too large, a bool or not a number); the message names ``name`` and the range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not _in_range(value, 0.0, maximum, True):
        raise ConfigurationError(f"{name}={value!r} is out of range: it must be {_range_text(0.0, maximum, True)}")
    return float(value)


def _in_range(value: float, minimum: float, maximum: float, positive: bool) -> bool:
    """Whether ``value`` is finite, from ``minimum`` (above it when ``positive``) to ``maximum``."""
    if not math.isfinite(value) or value > maximum:
        return False
    return value > minimum if positive else value >= minimum


def _range_text(minimum: float, maximum: float, positive: bool) -> str:
    return f"{'above' if positive else 'from'} {minimum:g} {'and at most' if positive else 'to'} {maximum:g} seconds"
