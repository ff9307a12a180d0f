"""Drivers: the contract (:class:`Driver`) and the registry of URL schemes.

Built-in schemes map to ``module:Class`` strings imported on first use. Third-party
packages add schemes through the entry-point group ``dfdb.drivers``::

    [project.entry-points."dfdb.drivers"]
    mydb = "mypackage.driver:MyDriver"
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from dfdb.drivers.base import (
    ABSENT,
    ANY,
    Capability,
    Digest,
    Driver,
    Entry,
    EventSource,
    Expect,
    Guard,
    KeyListing,
    Listing,
    PutRequest,
    RawAction,
    RawEvent,
    check_delete,
    check_put,
)
from dfdb.drivers.sources import BufferedSource, ReaderTaskSource
from dfdb.errors import MissingDependencyError, UnknownDriverError
from dfdb.url import DatabaseURL

__all__ = [
    "ABSENT",
    "ANY",
    "BufferedSource",
    "Capability",
    "Digest",
    "Driver",
    "Entry",
    "EventSource",
    "Expect",
    "KeyListing",
    "Guard",
    "Listing",
    "PutRequest",
    "RawAction",
    "RawEvent",
    "ReaderTaskSource",
    "check_delete",
    "check_put",
    "driver_class",
    "known_schemes",
    "register_driver",
]

ENTRY_POINT_GROUP = "dfdb.drivers"

# scheme -> ("module:Class", extra that installs its client library or None)
_BUILTIN: dict[str, tuple[str, str | None]] = {
    "memory": ("dfdb.drivers.memory:MemoryDriver", None),
    "sqlite": ("dfdb.drivers.sqlite:SqliteDriver", "sqlite"),
    "redis": ("dfdb.drivers.redis:RedisDriver", "redis"),
    "rediss": ("dfdb.drivers.redis:RedisDriver", "redis"),
    "unix": ("dfdb.drivers.redis:RedisDriver", "redis"),
    "redis+sentinel": ("dfdb.drivers.redis_sentinel:SentinelDriver", "redis"),
    "rediss+sentinel": ("dfdb.drivers.redis_sentinel:SentinelDriver", "redis"),
    "etcd": ("dfdb.drivers.etcd:EtcdDriver", "etcd"),
    "zk": ("dfdb.drivers.zookeeper:ZooKeeperDriver", "zookeeper"),
}

_registered: dict[str, type[Driver] | str] = {}


def register_driver(scheme: str, driver: type[Driver] | str) -> None:
    """Register ``driver`` (a class or a ``module:Class`` string) for URL ``scheme``."""
    _registered[scheme.lower()] = driver


def _entry_points() -> dict[str, str]:
    return {ep.name.lower(): ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_schemes() -> list[str]:
    """Every scheme a driver is known for: built-in, registered and from entry points."""
    return sorted({*_BUILTIN, *_registered, *_entry_points()})


def driver_class(url: DatabaseURL) -> type[Driver]:
    """The driver class for ``url``'s scheme, imported now.

    Raises:
        UnknownDriverError: no driver has that scheme; the message lists the known ones.
        MissingDependencyError: the driver's client library is not installed.
    """
    scheme = url.scheme
    target: type[Driver] | str | None = _registered.get(scheme)
    extra: str | None = None
    if target is None and scheme in _BUILTIN:
        target, extra = _BUILTIN[scheme]
    if target is None:
        target = _entry_points().get(scheme)
    if target is None:
        raise UnknownDriverError(f"no dfdb driver for scheme {scheme!r}; known schemes: {', '.join(known_schemes())}")
    if isinstance(target, type):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is not None and exc.name and exc.name.split(".")[0] != "dfdb":
            raise MissingDependencyError(
                f"the {scheme}:// driver needs the {exc.name!r} package. Install it with: pip install 'dfdb[{extra}]'"
            ) from exc
        raise MissingDependencyError(f"cannot import the {scheme}:// driver {target!r}: {exc}") from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise UnknownDriverError(f"{target!r} registered for {scheme}:// is not a dfdb Driver")
    return cls
