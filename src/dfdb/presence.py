"""Presence: which controllers and services are alive, and how far behind they are.

A running service publishes one :class:`ServicePresence` object bound to a lease: it is
refreshed every ``interval`` seconds (with its Replica's position and lag when it has one)
and vanishes, as an expiry, when the process stops — exit, crash, ``kill -9``, or a network
cut longer than the lease's TTL (three intervals by default)::

    async with dfdb.Replica(nb, [LogicalPort]) as replica, dfdb.publish_presence(
        nb, "local-controller", chassis="compute-1", replica=replica
    ):
        ...

``dfdb status`` lists the live services (``--json`` for a machine), and
:func:`live_services` returns them.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from dfdb.errors import DfdbError, LeaseLostError
from dfdb.nbmodel import NbModel, validate_key

if TYPE_CHECKING:
    from dfdb.leases import Lease
    from dfdb.nb import NbApi

__all__ = ["Presence", "ServicePresence", "live_services", "publish_presence"]

log = logging.getLogger(__name__)


class ServicePresence(NbModel, table="dfdb_service"):
    """One running service; its id is ``CHASSIS.SERVICE.PID``. Topic-less."""

    service: str
    chassis: str
    pid: int
    dfdb_version: str = ""
    position: int | None = None
    """The revision its Replica holds everything up to (``None``: it has none)."""
    lag: int | None = None
    """Events its Replica has taken but not yet applied."""
    reported_at: float = 0.0
    """Wall-clock time (seconds since the epoch) of the last report."""
    interval: float = 0.0
    """Seconds between two reports."""


class Presence:
    """The publisher made by :func:`publish_presence` (an async context manager).

    Attributes:
        record: the last :class:`ServicePresence` written.
        lease: the lease it is bound to.
    """

    def __init__(self, nb: NbApi, service: str, chassis: str, replica: Any, interval: float, ttl: float | None) -> None:
        validate_key(service, "service name")
        validate_key(chassis, "chassis name")
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval < math.inf:
            raise ValueError(f"the presence interval must be a positive number of seconds, not {interval!r}")
        self._nb = nb
        self._replica = replica
        self.service = service
        self.chassis = chassis
        self.interval = float(interval)
        self.lease: Lease = nb.lease(ttl if ttl is not None else max(3 * self.interval, 1.0))
        self.record: ServicePresence | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    def _current(self) -> ServicePresence:
        from dfdb import __version__

        stats = self._replica.stats() if self._replica is not None else None
        return ServicePresence(
            id=f"{self.chassis}.{self.service}.{os.getpid()}",
            service=self.service,
            chassis=self.chassis,
            pid=os.getpid(),
            dfdb_version=__version__,
            position=None if stats is None else stats.position,
            lag=None if stats is None else stats.lag,
            reported_at=time.time(),
            interval=self.interval,
        )

    async def report(self) -> ServicePresence:
        """Write the presence now (the background task does it every interval)."""
        self.record = await self._nb.put(self._current(), lease=self.lease)
        return self.record

    async def _every_interval(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.report()
            except LeaseLostError:
                log.warning("presence of %s on %s: its lease ended; no more reports", self.service, self.chassis)
                return
            except DfdbError as exc:
                log.warning("presence of %s on %s: report failed (%s); retrying", self.service, self.chassis, exc)

    async def __aenter__(self) -> Presence:
        await self.lease.__aenter__()
        try:
            await self.report()
        except BaseException as exc:
            await self.lease.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._every_interval)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            await self.lease.__aexit__(et, e, tb)  # revoked: the record goes


def publish_presence(
    nb: NbApi,
    service: str,
    *,
    chassis: str | None = None,
    replica: Any = None,
    interval: float = 5.0,
    ttl: float | None = None,
) -> Presence:
    """Publish this process as a live ``service`` while the ``async with`` block runs.

    Args:
        chassis: the host it runs on (default: the host name).
        replica: a :class:`~dfdb.Replica` whose position and lag are reported.
        interval: seconds between reports.
        ttl: the lease's TTL (default three intervals, at least a second).

    Raises:
        ValueError: a name is not a valid key, or ``interval`` is not positive.
    """
    return Presence(nb, service, chassis or socket.gethostname().split(".")[0], replica, interval, ttl)


async def live_services(nb: NbApi) -> list[ServicePresence]:
    """The services alive now, by chassis then service."""
    return sorted(await nb.get_all(ServicePresence), key=lambda s: (s.chassis, s.service, s.pid))
