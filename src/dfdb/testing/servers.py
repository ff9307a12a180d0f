"""The local servers of :mod:`dfdb.servers`, as the test fixtures use them.

A missing server binary skips the tests that need it, or fails them when
``DFDB_REQUIRE_SERVERS=1`` (:func:`require_servers`), as in CI.
"""

from __future__ import annotations

import os

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
    "SERVERS",
    "EtcdServer",
    "LocalServer",
    "RedisServer",
    "ServerUnavailable",
    "ZooKeeperServer",
    "free_port",
    "require_servers",
]


def require_servers() -> bool:
    """Whether a missing server must fail tests instead of skipping them (``DFDB_REQUIRE_SERVERS=1``)."""
    return os.environ.get("DFDB_REQUIRE_SERVERS", "") not in ("", "0")
