"""What a Replica tells its consumers: :class:`ReplicaEvent`, delivered through
:class:`ReplicaEvents` in dependency order, coalesced per key and bounded per consumer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from dfdb.events import Action
from dfdb.nbmodel import NbModel, reference_targets

__all__ = ["EventFlow", "Flag", "ReplicaEvent", "ReplicaEvents"]

Key = tuple[type[NbModel], str]


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    """A change the Replica applied: ``old`` is ``None`` for a create, ``new`` for a delete.

    ``RESYNC`` (``model`` ``None``) tells a consumer of ``events()`` that it fell too far
    behind: its pending events were dropped, and it should read the Replica's state again.

    ``corrupt`` is true on a ``DELETE`` that is not a deletion: the object's new stored
    value failed validation, so the Replica evicted its outdated copy (the database still
    holds the bad value; it is logged with its table and key and counted in
    ``ReplicaStats.corrupt``). A later valid write brings the object back as a ``CREATE``.

    ``expired`` is true on a ``DELETE`` of an object whose lease ended (its holder stopped
    or revoked it), as the change stream reported it.
    """

    action: Action
    model: type[NbModel] | None
    id: str
    old: NbModel | None
    new: NbModel | None
    revision: int
    corrupt: bool = False
    expired: bool = False


class Flag:
    """A flag tasks can wait for, set and cleared again (on any anyio backend)."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


class _Consumer:
    """One ``events()`` consumer: pending events coalesced per key, at most ``limit`` keys;
    past that the pending events are replaced by one ``RESYNC``. A merged event keeps its
    place, so that what refers to the object still comes after it, unless it is a delete or
    now refers to an object pending after it: then it goes last.

    The pending events stay in this keyed buffer until a read returns one (a read cancelled
    at any point leaves them all in place). A memory object stream of one slot wakes the
    reader, and its closing (the Replica closed) ends the iteration once nothing is pending.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: dict[tuple[type[NbModel] | None, str], ReplicaEvent] = {}
        self.overflows = 0
        self._bell: MemoryObjectSendStream[None]
        self._woken: MemoryObjectReceiveStream[None]
        self._bell, self._woken = anyio.create_memory_object_stream[None](1)

    def push(self, event: ReplicaEvent) -> None:
        key = (event.model, event.id)
        before = self.pending.get(key)
        merged = event if before is None else _coalesce(before, event)
        if merged is None:
            del self.pending[key]
        elif before is not None and (merged.new is None or self._refers_to_later(key, merged.new)):
            del self.pending[key]  # a delete, or an object whose targets wait behind it: it goes last
            self.pending[key] = merged
        else:
            self.pending[key] = merged  # keeps its place: the events after it that refer to it stay after it
        if len(self.pending) > self.limit:
            self.overflows += 1
            self.pending = {(None, ""): ReplicaEvent(Action.RESYNC, None, "", None, None, event.revision)}
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._bell.send_nowait(None)  # a full bell already wakes the reader

    def _refers_to_later(self, key: tuple[type[NbModel] | None, str], obj: NbModel) -> bool:
        """Whether ``obj`` refers to an object whose event is pending after ``key``'s."""
        targets = [t for t in reference_targets(obj) if t in self.pending]
        if not targets:
            return False
        order = {k: n for n, k in enumerate(self.pending)}
        return any(order[t] > order[key] for t in targets)

    async def get(self) -> ReplicaEvent:
        """The oldest pending event, waiting for one.

        Raises:
            StopAsyncIteration: the consumer was closed and nothing is pending.
        """
        while not self.pending:
            try:
                await self._woken.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                if self.pending:
                    break
                raise StopAsyncIteration from None
        key = next(iter(self.pending))
        return self.pending.pop(key)  # no await since the check: nothing is lost to a cancellation

    def end(self) -> None:
        """No more events will come: the reader stops once the pending ones are read."""
        self._bell.close()
        self._woken.close()

    def close(self) -> None:
        self.end()
        self.pending.clear()


def _coalesce(first: ReplicaEvent, then: ReplicaEvent) -> ReplicaEvent | None:
    """One event with the effect of ``first`` followed by ``then`` on the same key (``None``:
    nothing happened, a create undone by a delete)."""
    if first.action == Action.RESYNC:
        return first
    if first.action == Action.CREATE:
        if then.action == Action.DELETE:
            return None
        return ReplicaEvent(Action.CREATE, then.model, then.id, None, then.new, then.revision)
    if first.action == Action.DELETE and then.action == Action.CREATE:
        return ReplicaEvent(Action.UPDATE, then.model, then.id, first.old, then.new, then.revision)
    old = first.old
    return ReplicaEvent(then.action, then.model, then.id, old, then.new, then.revision, then.corrupt, then.expired)


class ReplicaEvents:
    """An async iterator of :class:`ReplicaEvent` from ``Replica.events()``; it ends when the
    Replica closes (after the events still pending). Cancelling a read (``asyncio.wait_for``,
    a cancel scope) loses nothing: the event it would have returned is the next one read."""

    def __init__(self, subscribers: set[_Consumer], consumer: _Consumer) -> None:
        self._subscribers = subscribers
        self._consumer = consumer

    def __aiter__(self) -> ReplicaEvents:
        return self

    async def __anext__(self) -> ReplicaEvent:
        if self._consumer not in self._subscribers and not self._consumer.pending:
            raise StopAsyncIteration
        return await self._consumer.get()

    @property
    def pending(self) -> int:
        """How many keys have events waiting to be read."""
        return len(self._consumer.pending)

    async def aclose(self) -> None:
        """Unsubscribe; idempotent."""
        self._subscribers.discard(self._consumer)
        self._consumer.close()

    def __del__(self) -> None:
        self._subscribers.discard(self._consumer)
        self._consumer.close()


class EventFlow:
    """Delivers a Replica's applied changes to its ``events()`` consumers: an object's event
    after those of the objects it references. An event whose reference target is not held
    yet waits for it (``defer``), and is never dropped: the object's own delete releases it.

    Args:
        missing: the reference targets of an object that the Replica does not hold.
        max_pending: the most keys a consumer may have pending.
        defer: whether events wait for their reference targets.
    """

    def __init__(self, missing: Callable[[NbModel], set[Key]], max_pending: int, *, defer: bool) -> None:
        self._missing = missing
        self.max_pending = max_pending
        self.defer = defer
        self.subscribers: set[_Consumer] = set()
        self._waiting: dict[Key, list[tuple[ReplicaEvent, set[Key]]]] = {}
        self.muted = False
        """While set, events are applied but told to nobody (a relist tells the difference)."""
        self.emitted = 0
        """Events emitted (applied changes)."""
        self.deferred = 0
        """Events held back until a reference target arrived (in all)."""
        self.deferred_now = 0
        """Events waiting for a reference target now."""

    def subscribe(self) -> ReplicaEvents:
        """A new consumer of every event from now on."""
        consumer = _Consumer(self.max_pending)
        self.subscribers.add(consumer)
        return ReplicaEvents(self.subscribers, consumer)

    @property
    def lag(self) -> int:
        """Keys pending for the slowest consumer."""
        return max((len(c.pending) for c in self.subscribers), default=0)

    def end(self) -> None:
        """The Replica closed: consumers end once they have read what is pending."""
        for consumer in self.subscribers:
            consumer.end()

    def emit(self, event: ReplicaEvent) -> None:
        """Tell ``event`` to the consumers, after the events of its missing reference targets."""
        self.emitted += 1
        assert event.model is not None
        key = (event.model, event.id)
        if event.action == Action.DELETE:
            self._release(key, force=True)  # its own held-back events go first, never dropped
        elif event.new is not None and self.defer:
            missing = self._missing(event.new)
            if missing:
                self.deferred += 1
                self.deferred_now += 1
                entry = (event, missing)
                for ref in missing:
                    self._waiting.setdefault(ref, []).append(entry)
                return
        self._deliver(event)
        if event.action != Action.DELETE:
            self._release(key)

    def waits(self) -> bool:
        """Whether some event waits for the object of a key (:meth:`applied` releases it)."""
        return bool(self._waiting)

    def applied(self, key: Key) -> None:
        """A create of ``key`` was applied while nobody listens, its reference targets held:
        counted, and the events that waited for it are released (the event itself is not
        built: no consumer would read it)."""
        assert not self.subscribers or self.muted
        self.emitted += 1
        self._release(key)

    def _release(self, key: Key, *, force: bool = False) -> None:
        """Deliver the events that waited for ``key`` (all of them when ``force``)."""
        for event, missing in self._waiting.pop(key, []):
            missing.discard(key)
            if missing and not force:
                continue
            for other in missing:
                waiting = self._waiting.get(other, [])
                waiting[:] = [(e, m) for e, m in waiting if e is not event]
                if not waiting:
                    self._waiting.pop(other, None)
            self.deferred_now -= 1
            self._deliver(event)
            assert event.model is not None
            self._release((event.model, event.id))

    def _deliver(self, event: ReplicaEvent) -> None:
        if self.muted:
            return
        for consumer in self.subscribers:
            consumer.push(event)
