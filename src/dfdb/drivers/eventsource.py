"""The change source a driver's ``watch`` returns: :class:`EventSource`."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable

from dfdb.drivers.records import Entry, RawEvent
from dfdb.errors import StreamClosedError

__all__ = ["EventSource"]

log = logging.getLogger("dfdb.drivers.base")


class EventSource(ABC):
    """An async iterator of :class:`RawEvent` returned by :meth:`Driver.watch`: the whole
    contract a :class:`~dfdb.ChangeStream` relies on.

    Life cycle: ``await start()`` subscribes (``Driver.watch`` calls it before it
    returns the source, so every later change arrives); ``__anext__`` returns the next
    event; ``aclose`` stops the source and releases everything it holds (tasks,
    connections), and is idempotent.

    Position: :attr:`position` is a revision such that every change of the watched
    scope at or below it has been returned by ``__anext__``. A stream's cursor never
    passes it, so a watch resumed from that cursor misses nothing.

    Cancellation: cancelling ``__anext__`` (a timeout around ``anext(stream)``) loses
    nothing, repeats nothing, drops no connection and leaves no task: an event the
    source took from the backend is kept for the next call. Sources built on
    :class:`dfdb.drivers.sources.BufferedSource` get this from its read loop.

    Counters (public, read by ``ChangeStream`` and the Replica's stats):
    :attr:`records_read`, :attr:`bytes_read`, :attr:`records_malformed` and
    :attr:`reconnects`. A change record the driver cannot read is reported with
    :meth:`_malformed`, which logs and counts it and returns the ``resync`` of its
    table, so that the record's scope is made whole again and the stream goes on.

    Most sources derive from :class:`dfdb.drivers.sources.BufferedSource`, which owns
    the read loop (buffer, rounds, backoff) and leaves a backend only "read one round".
    """

    records_read: int = 0
    """Change records this source read from the backend (a snapshot poll counts every
    object it lists)."""
    bytes_read: int = 0
    """The size of those records as the driver received them (keys, values, metadata)."""
    records_malformed: int = 0
    """Change records this source could not read (each reported with a ``resync``)."""
    reconnects: int = 0
    """How many times this source had to read again after a failed read (a lost
    connection, a dropped watch): a cancelled ``__anext__`` never counts here."""

    def _count_read(self, records: Iterable[RawEvent | Entry]) -> None:
        """Count ``records`` (events, or the entries of a listing) as read, for sources
        that receive them whole: table, id, topic, value and 16 bytes of metadata each."""
        for r in records:
            self.records_read += 1
            self.bytes_read += len(r.table or "") + len(r.id) + len(r.topic or "") + len(r.value or b"") + 16

    def _malformed(self, table: str | None, key: str, revision: int, reason: str) -> RawEvent:
        """Report a change record this source cannot read, and return what makes its scope
        whole again: logged (table, key or position, reason), counted in
        :attr:`records_malformed`, answered with a ``resync`` of ``table`` (``None``:
        everything watched) continuing from ``revision``. Deliver the event in the
        record's place; the stream goes on after it."""
        self._count_malformed(table, key, revision, reason, "resyncing " + (table or "everything watched"))
        return RawEvent("resync", table, "", None, None, revision)

    def _count_malformed(self, table: str | None, key: str, revision: int, reason: str, outcome: str) -> None:
        """Log and count an unreadable record; ``outcome`` says what the source does about it
        (a record that belongs to no watched table is only reported: ``"skipped"``)."""
        self.records_malformed += 1
        log.warning(
            "unreadable change record %s of table %s at revision %d (%s); %s",
            key,
            table if table is not None else "?",
            revision,
            reason,
            outcome,
        )

    @staticmethod
    def _below(buffer: Iterable[RawEvent], position: int) -> int:
        """``position``, or just below the oldest event still in ``buffer``."""
        return min(position, min((ev.revision for ev in buffer), default=position + 1) - 1)

    async def start(self) -> None:  # noqa: B027  (optional: a source subscribed when built skips it)
        """Subscribe: every change after the source's starting revision arrives once this
        returns. ``Driver.watch`` awaits it before it returns the source.

        Raises:
            BackendUnavailableError: the server cannot be reached.
        """

    @property
    @abstractmethod
    def position(self) -> int:
        """Every change of the watched scope at or below this revision has been returned."""

    def caught_up(self) -> int | None:
        """A revision such that every change of the watched scope at or below it has been
        returned, or ``None`` when the source cannot tell: it lets an idle stream's
        cursor move past changes outside its scope. The default is :attr:`position`."""
        return self.position

    def __aiter__(self) -> EventSource:
        return self

    @abstractmethod
    async def __anext__(self) -> RawEvent:
        """The next event, waiting for one; cancellation-safe (see the class documentation).

        Raises:
            StopAsyncIteration: the source was closed.
            BackendUnavailableError: the server is gone and reconnecting failed.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Stop the source and release its tasks and connections; idempotent."""

    async def add_topics(self, topics: Collection[str | None], since: int) -> None:
        """Follow ``topics`` too, from revision ``since``: every change of them after
        ``since`` arrives (those at or before the source's position first, then the rest
        in order). Sources of a watch on every topic ignore this.

        Raises:
            StreamClosedError: this source cannot change its topics; open a new watch.
        """
        raise StreamClosedError(f"{type(self).__name__} cannot add topics to a running watch")
