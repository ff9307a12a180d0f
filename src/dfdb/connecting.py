"""``dfdb.connect``: an :class:`~dfdb.NbApi` from a database URL."""

from __future__ import annotations

import itertools
from typing import cast

from dfdb.drivers import driver_class
from dfdb.drivers.base import Capability, Driver
from dfdb.errors import ConfigurationError, InvalidURL
from dfdb.nb import NbApi, Notifications
from dfdb.url import MAX_POLL_INTERVAL, DatabaseURL, positive_seconds

__all__ = ["connect"]

_SHARED_OPTIONS = ("poll_interval", "timeout")
_LOCAL_SCHEMES = frozenset({"memory", "sqlite"})
"""Backends without authentication: credentials given to them are refused, not ignored."""
"""URL options that configure the NbApi and that a driver may read too (its own per-call timeout)."""


def connect(
    url: str | DatabaseURL,
    *,
    notifications: Notifications | None = None,
    poll_interval: float | None = None,
    timeout: float | None = None,
) -> NbApi:
    """An :class:`NbApi` for ``url``; open it with ``async with`` (or ``await``).

    Args:
        url: e.g. ``memory://``, ``redis://127.0.0.1:6379/0``. The options
            ``notifications``, ``poll_interval`` and ``timeout`` may also be given in
            the URL's query string; keyword arguments win. The password may also come
            from ``password_file=PATH`` or, for a URL that names a user, from the
            environment variable ``DFDB_PASSWORD``.
        notifications: ``auto`` (native stream or change log when the driver has
            one, else snapshot polling), ``native`` (refuse polling) or ``poll``.
        poll_interval: seconds between snapshot polls (default 0.5).
        timeout: seconds a call may take, retries included, before
            ``BackendUnavailableError`` (default 10).

    A ``timeout`` or ``poll_interval`` in the URL also reaches the driver when it
    reads that option itself (etcd's and ZooKeeper's per-call timeout, SQLite's
    change-log poll interval); a keyword argument sets only the NbApi's.

    Raises:
        InvalidURL, UnknownDriverError, MissingDependencyError: a configuration mistake
            (also a ``timeout`` or ``poll_interval`` that is not a finite number of
            seconds above 0 and at most a day, an hour for ``poll_interval``: the
            message names the option and its range).
    """
    parsed = DatabaseURL.parse(url).with_credentials()
    if parsed.scheme in _LOCAL_SCHEMES and (parsed.username is not None or parsed.password is not None):
        raise InvalidURL(f"{parsed.scheme}:// has no authentication: a user name or password would protect nothing")
    mode = notifications or parsed.option("notifications", "auto")
    if mode not in ("auto", "native", "poll"):
        raise ConfigurationError(f"notifications must be auto, native or poll, not {mode!r}")
    # the URL's values are checked even when a keyword argument wins
    url_interval = parsed.float_option("poll_interval", 0.5, maximum=MAX_POLL_INTERVAL, positive=True)
    url_limit = parsed.float_option("timeout", 10.0, positive=True)
    interval = positive_seconds(
        "poll_interval", poll_interval if poll_interval is not None else url_interval, MAX_POLL_INTERVAL
    )
    limit = positive_seconds("timeout", timeout if timeout is not None else url_limit)
    driver = _build_driver(parsed.without_options("notifications"))
    if mode == "native" and not driver.capabilities & (Capability.NATIVE_STREAM | Capability.CHANGE_LOG):
        raise ConfigurationError(f"the {parsed.scheme}:// driver has no native change stream")
    return NbApi(driver, notifications=cast(Notifications, mode), poll_interval=interval, timeout=limit)


def _build_driver(url: DatabaseURL) -> Driver:
    """The driver for ``url``, given those of the NbApi's options it reads itself."""
    cls = driver_class(url)
    given = [o for o in _SHARED_OPTIONS if o in url.options]
    # fewest options dropped first: the driver keeps every one it accepts
    for k in range(len(given) + 1):
        for dropped in itertools.combinations(given, k):
            try:
                return cls(url.without_options(*dropped))
            except InvalidURL:
                if k == len(given):
                    raise
    raise AssertionError("unreachable")  # pragma: no cover
