"""The errors dfdb raises.

Every failure is a :class:`DfdbError`. Builtin exception types are mixed in so that
generic handlers keep working (``except LookupError`` catches :class:`NotFoundError`)::

    DfdbError
    ├─ ConfigurationError(ValueError)
    │   ├─ InvalidURL
    │   ├─ UnknownDriverError
    │   ├─ MissingDependencyError(ImportError)
    │   └─ UnsupportedEventLoopError
    ├─ DriverError
    │   ├─ BackendUnavailableError(ConnectionError)
    │   │   └─ OutcomeUnknownError
    │   ├─ BackendTimeoutError(TimeoutError)
    │   │   └─ LockedError
    │   └─ AuthenticationError(PermissionError)
    ├─ NotFoundError(LookupError)
    ├─ AlreadyExistsError
    ├─ ConflictError
    ├─ LeaseLostError
    ├─ CorruptObjectError
    ├─ ValueTooLargeError(ValueError)
    ├─ StreamClosedError
    └─ ModelDefinitionError(TypeError)

Client-library exceptions (redis, grpc, ZooKeeper, sqlite) never reach the user:
drivers map them to these types at their boundary.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "ConfigurationError",
    "ConflictError",
    "CorruptObjectError",
    "DfdbError",
    "DriverError",
    "InvalidURL",
    "LeaseLostError",
    "LockedError",
    "MissingDependencyError",
    "ModelDefinitionError",
    "NotFoundError",
    "OutcomeUnknownError",
    "StreamClosedError",
    "UnknownDriverError",
    "UnstorableKeyError",
    "UnsupportedEventLoopError",
    "ValueTooLargeError",
]


class DfdbError(Exception):
    """Base class of every error dfdb raises."""


class ConfigurationError(DfdbError, ValueError):
    """The configuration (a URL, an option) is wrong; fix it and try again."""


class InvalidURL(ConfigurationError):
    """A database URL that cannot be parsed or has a bad option value."""


class UnknownDriverError(ConfigurationError):
    """No driver is registered for the URL's scheme."""


class MissingDependencyError(ConfigurationError, ImportError):
    """The client library a driver needs is not installed."""


class UnsupportedEventLoopError(ConfigurationError):
    """The driver's client library runs only under asyncio and another event loop (trio) is running."""


class DriverError(DfdbError):
    """The backend failed to carry out an operation."""


class BackendUnavailableError(DriverError, ConnectionError):
    """The server cannot be reached or dropped the connection, and retries are spent."""


class OutcomeUnknownError(BackendUnavailableError):
    """A write's reply was lost and dfdb cannot tell whether the write took effect."""


class BackendTimeoutError(DriverError, TimeoutError):
    """The backend did not answer within the call's timeout."""


class LockedError(BackendTimeoutError):
    """Another connection held the database's lock until the call's deadline: the call
    did nothing (a write was not applied, so it is not an :class:`OutcomeUnknownError`)."""


class AuthenticationError(DriverError, PermissionError):
    """The server refused the credentials (wrong or missing user name or password).

    A permanent failure: it is not retried, whatever the call's timeout.
    """


class NotFoundError(DfdbError, LookupError):
    """The object (table, id) does not exist."""


class AlreadyExistsError(DfdbError):
    """A create found an object with the same (table, id)."""


class ConflictError(DfdbError):
    """A compare-and-swap failed: the object changed since the copy was read."""


class LeaseLostError(DfdbError):
    """A lease ended (it expired, was revoked, or its holder could not keep it alive
    within its TTL), or a lock moved on to another holder: a write bound to it or guarded
    by it was refused, and nothing was written."""


class CorruptObjectError(DfdbError):
    """A stored value cannot be decoded into its model.

    Attributes:
        table: the table of the bad value.
        id: the key of the bad value.
    """

    def __init__(self, table: str, id: str, reason: str) -> None:
        super().__init__(f"corrupt object {table}/{id}: {reason}")
        self.table = table
        self.id = id
        self.reason = reason


class ValueTooLargeError(DfdbError, ValueError):
    """An object's encoded value is larger than its backend takes (``Driver.max_value_size``).

    Attributes:
        table: the object's table.
        id: the object's id.
        size: the encoded size, in bytes.
        limit: the backend's limit, in bytes.
    """

    def __init__(self, table: str, id: str, size: int, limit: int, backend: str) -> None:
        super().__init__(
            f"{table}/{id}: the encoded object is {size:,} bytes; the {backend} backend takes at most {limit:,}"
        )
        self.table = table
        self.id = id
        self.size = size
        self.limit = limit


class UnstorableKeyError(DfdbError, ValueError):
    """An id or topic holds a character that its backend cannot store in a name (valid for
    dfdb, refused by the backend: ZooKeeper takes no character beyond U+FFFF and none of
    U+D800 to U+F8FF or U+FFF0 to U+FFFF in a node's name).

    Attributes:
        table: the object's table.
        key: the id or topic refused.
    """

    def __init__(self, table: str, key: str, what: str, backend: str) -> None:
        super().__init__(
            f"{table}: the {backend} backend cannot store the {what} {key!r} (it holds a character refused in names)"
        )
        self.table = table
        self.key = key


class StreamClosedError(DfdbError):
    """The stream, NbApi or driver was closed and cannot be used any more."""


class ModelDefinitionError(DfdbError, TypeError):
    """A model class is defined wrongly (duplicate table, reference cycle, …)."""
