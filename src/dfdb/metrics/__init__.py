"""Prometheus metrics of dfdb, through the standard Python client ``prometheus-client``
(install it with ``pip install 'dfdb[metrics]'``).

The counters themselves are plain Python and always kept: ``NbApi.stats()`` and
``Replica.stats()``. This module exports them at scrape time, by backend (the URL
scheme) and table; nothing is counted twice and nothing runs between scrapes::

    from dfdb import metrics

    metrics.register()                    # every NbApi and Replica of the process, on the default registry
    async with metrics.serve(9464):       # http://127.0.0.1:9464/metrics from the running event loop
        ...

``prometheus_client.start_http_server(9464)`` works as well (it serves from a thread of
its own); :func:`serve` reads the counters on the event loop that changes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from dfdb.errors import MissingDependencyError
from dfdb.metrics.stats import NbStats, TableStats

if TYPE_CHECKING:
    from dfdb.metrics.exporter import DfdbCollector
    from dfdb.metrics.server import MetricsServer
    from dfdb.nb import NbApi

__all__ = ["NbStats", "TableStats", "collector", "new_registry", "register", "serve"]

INSTALL_HINT = "pip install 'dfdb[metrics]'"


def _require() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"dfdb metrics need the 'prometheus-client' package. Install it with: {INSTALL_HINT}"
        ) from exc


def collector(*apis: NbApi) -> DfdbCollector:
    """A Prometheus collector of ``apis`` (with their Replicas and change streams); of every
    NbApi of the process, now and later, when none is given.

    Raises:
        MissingDependencyError: ``prometheus-client`` is not installed.
        TypeError: one of ``apis`` is not an :class:`~dfdb.NbApi`.
    """
    _require()
    from dfdb.metrics.exporter import DfdbCollector
    from dfdb.nb import NbApi

    for api in apis:
        if not isinstance(api, NbApi):
            raise TypeError(f"dfdb metrics are those of NbApi objects (dfdb.connect(url)), not {type(api).__name__}")
    return DfdbCollector(apis or None)


def register(*apis: NbApi, registry: Any = None) -> DfdbCollector:
    """Register :func:`collector` ``(*apis)`` on ``registry`` (default: ``prometheus_client.REGISTRY``)
    and return it (``registry.unregister(it)`` removes it).

    Raises:
        MissingDependencyError: ``prometheus-client`` is not installed.
        ValueError: dfdb's metrics are registered on ``registry`` already.
    """
    found = collector(*apis)
    if registry is None:
        from prometheus_client import REGISTRY as registry
    try:
        registry.register(found)
    except ValueError:  # prometheus-client names every duplicated series
        raise ValueError(
            "dfdb's metrics are registered on this registry already "
            "(registry.unregister(collector) removes the collector that register() returned)"
        ) from None
    return found


def new_registry(*apis: NbApi) -> Any:
    """A new ``prometheus_client.CollectorRegistry`` holding only dfdb's metrics (of ``apis``;
    of every NbApi when none is given).

    Raises:
        MissingDependencyError: ``prometheus-client`` is not installed.
    """
    _require()
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    register(*apis, registry=registry)
    return registry


@asynccontextmanager
async def serve(port: int, *, host: str = "127.0.0.1", registry: Any = None) -> AsyncIterator[MetricsServer]:
    """Serve ``registry`` (default: ``prometheus_client.REGISTRY``) over HTTP at
    ``http://host:port/metrics`` from the running event loop (asyncio or trio) while the
    ``async with`` block runs. Port 0 picks a free port (``server.port``).

    Raises:
        MissingDependencyError: ``prometheus-client`` is not installed.
        ValueError: ``port`` is not an integer from 0 to 65535.
        OSError: the port cannot be bound (in use, or not allowed); its message names
            the address.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"a metrics port is an integer from 0 to 65535, not {port!r}")
    _require()
    from dfdb.metrics.server import run_server

    async with run_server(host, port, registry) as server:
        yield server
