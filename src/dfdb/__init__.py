"""dfdb: an asyncio-native, pluggable northbound database layer.

Everything an application needs is importable from here; driver authors import
from :mod:`dfdb.drivers`.
"""

from __future__ import annotations

import logging as _logging

from dfdb._interrupt import loaded as _loaded  # first: python -m dfdb, Ctrl-C while loading is exit 130

try:  # the usual SIGINT handling comes back however this import ends
    from dfdb.connecting import connect
    from dfdb.errors import (
        AlreadyExistsError,
        AuthenticationError,
        BackendTimeoutError,
        BackendUnavailableError,
        ConfigurationError,
        ConflictError,
        CorruptObjectError,
        DfdbError,
        DriverError,
        InvalidURL,
        LeaseLostError,
        LockedError,
        MissingDependencyError,
        ModelDefinitionError,
        NotFoundError,
        OutcomeUnknownError,
        StreamClosedError,
        UnknownDriverError,
        UnstorableKeyError,
        UnsupportedEventLoopError,
        ValueTooLargeError,
    )
    from dfdb.events import Action, ChangeEvent, ChangeStream
    from dfdb.leases import Lease, Lock
    from dfdb.metrics.stats import NbStats, TableStats
    from dfdb.nb import ListResult, NbApi, revision_of
    from dfdb.nbmodel import NbModel, Ref, dependency_order, registered_models
    from dfdb.presence import ServicePresence, publish_presence
    from dfdb.replica import ChassisTopics, Replica, ReplicaEvent, ReplicaEvents, ReplicaStats, SyncMode
    from dfdb.url import DatabaseURL
finally:
    _loaded()

__version__ = "0.1.0"

_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = [
    "ChassisTopics",
    "Action",
    "AlreadyExistsError",
    "AuthenticationError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "ChangeEvent",
    "ChangeStream",
    "ConfigurationError",
    "ConflictError",
    "CorruptObjectError",
    "DatabaseURL",
    "DfdbError",
    "DriverError",
    "InvalidURL",
    "Lease",
    "LeaseLostError",
    "ListResult",
    "Lock",
    "LockedError",
    "MissingDependencyError",
    "ModelDefinitionError",
    "NbApi",
    "NbModel",
    "NbStats",
    "NotFoundError",
    "OutcomeUnknownError",
    "Ref",
    "Replica",
    "ReplicaEvent",
    "ReplicaEvents",
    "ReplicaStats",
    "ServicePresence",
    "StreamClosedError",
    "SyncMode",
    "TableStats",
    "UnknownDriverError",
    "UnstorableKeyError",
    "UnsupportedEventLoopError",
    "ValueTooLargeError",
    "__version__",
    "connect",
    "dependency_order",
    "publish_presence",
    "registered_models",
    "revision_of",
]
