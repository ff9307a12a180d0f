"""The Replica: a local controller's in-memory copy of the database, kept in sync.

Three modes: ``FULL`` (every object of the chosen models), ``SELECTIVE`` (the
subscribed topics plus topic-less objects, topics added and removed at run time) and
``REACTIVE`` (nothing up front; objects fetched on first access and kept fresh while
held, least recently used ones evicted). A Replica loads with a list, follows one
change stream from the list's cursor (reopened from its cursor when it breaks), never
lets a lower revision overwrite a higher one (deletes included), and answers
``RESYNC`` by relisting its scope. ``events()`` tells what changed, in dependency
order, coalesced per key and bounded per consumer.

The package's rooms: :mod:`~dfdb.replica.store` (rows, indexes, tombstones),
:mod:`~dfdb.replica.events` (consumers, coalescing, deferral), :mod:`~dfdb.replica.core`
(the Replica, with :mod:`~dfdb.replica.modes` and its lookups in :mod:`~dfdb.replica.lookups`),
:mod:`~dfdb.replica.antientropy` (the consistency checks against the database) and
:mod:`~dfdb.replica.chassis` (:class:`ChassisTopics`).
"""

from __future__ import annotations

from dfdb.replica.antientropy import CheckReport
from dfdb.replica.chassis import ChassisTopics
from dfdb.replica.core import Replica
from dfdb.replica.events import ReplicaEvent, ReplicaEvents
from dfdb.replica.modes import ReplicaStats, SyncMode

__all__ = ["ChassisTopics", "CheckReport", "Replica", "ReplicaEvent", "ReplicaEvents", "ReplicaStats", "SyncMode"]
