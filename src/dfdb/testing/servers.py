"""The local servers of :mod:`dfdb.servers`, as the test fixtures use them.

A missing server binary skips the tests that need it, or fails them when
``DFDB_REQUIRE_SERVERS=1`` (:func:`require_servers`), as in CI.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NoReturn

import pytest

from dfdb.servers import (
    SERVERS,
    EtcdServer,
    LocalServer,
    RedisServer,
    ServerUnavailable,
    ZooKeeperServer,
    free_port,
)

__all__ = [
    "BACKENDS",
    "DEBIAN_PACKAGES",
    "SERVERS",
    "EtcdServer",
    "LocalServer",
    "RedisServer",
    "ServerUnavailable",
    "ZooKeeperServer",
    "free_port",
    "install_command",
    "missing_backend",
    "require_servers",
    "skip_missing_server",
]

DEBIAN_PACKAGES = {"redis": "redis-server", "etcd": "etcd-server etcd-client", "zookeeper": "zookeeper"}
"""backend -> the Debian packages of its server (those ``scripts/install-servers.sh`` installs)."""

BACKENDS: dict[type[LocalServer], str] = {RedisServer: "redis", EtcdServer: "etcd", ZooKeeperServer: "zookeeper"}
"""server class -> the backend it serves."""

_MISSING = re.compile(r"^the (\w+) server is not installed")


def require_servers() -> bool:
    """Whether a missing server must fail tests instead of skipping them (``DFDB_REQUIRE_SERVERS=1``)."""
    return os.environ.get("DFDB_REQUIRE_SERVERS", "") not in ("", "0")


def install_command(backends: list[str], root: Path | None = None) -> str:
    """The one command that installs the servers of ``backends``: ``scripts/install-servers.sh``
    in a checkout of dfdb (``root``), ``apt-get install`` of their Debian packages elsewhere."""
    if root is not None and (root / "scripts" / "install-servers.sh").is_file():
        return " ".join(["scripts/install-servers.sh", *backends])
    return " ".join(["sudo apt-get install", *(DEBIAN_PACKAGES.get(b, b) for b in backends)])


def skip_missing_server(backend: str) -> NoReturn:
    """Skip the test because ``backend``'s server is not installed (fail it when
    :func:`require_servers`); the message says how to install it."""
    message = (
        f"the {backend} server is not installed: scripts/install-servers.sh {backend} in dfdb's checkout, "
        f"or {install_command([backend])}"
    )
    if require_servers():
        pytest.fail(message + ", and DFDB_REQUIRE_SERVERS is set")
    pytest.skip(message)


def missing_backend(skip_reason: str) -> str | None:
    """The backend named by a skip of :func:`skip_missing_server`, else ``None``."""
    found = _MISSING.match(skip_reason.removeprefix("Skipped: "))
    return found.group(1) if found else None
