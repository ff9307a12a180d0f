"""The state an :class:`~dfdb.drivers.etcd_watch.EtcdSource` keeps per prefix watch, and
the limits it works with."""

from __future__ import annotations

from dataclasses import dataclass

from dfdb.drivers.etcd_leases import MARK

__all__: list[str] = []


def _range_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass
class _Watcher:
    """One prefix watch of an :class:`EtcdSource`."""

    watch_id: int
    topic: str | None
    """The topic watched (``None``: the topic-less objects, or every topic for the only watch)."""
    prefix: bytes
    frontier: int
    """Every change under the prefix up to here has been delivered (known from this watch's
    own replies, or inferred from another watch's)."""
    confirmed: int
    """Every change under the prefix up to here has been delivered, by this watch's own replies."""
    shared: int = 0
    """A revision that changed keys of several topics (a lease's end), which other watches
    sent: this watch, just below it, may send its own changes of it still."""
    created: bool = False
    synced: bool = False
    """etcd sends this watch's changes as they happen (it is not catching up)."""
    released: int = 0
    """The highest revision a forced release returned while this watch was not past it."""
    resynced: int = 0
    """Up to here this watch's late changes were answered with a ``resync`` of its topic."""


def _resume_at(watcher: _Watcher) -> int:
    """Where a (re)created watch starts: after its own replies' last revision, so that a
    change another watch's reply only let it infer (a later revision while etcd held this
    watch's back, or a revision that changed keys of several topics) is read again; at most
    :data:`_RESUME_BACK` revisions before its frontier, and at the frontier itself (a
    revision may change several keys). What was delivered already is dropped by (revision,
    key)."""
    if watcher.confirmed >= watcher.frontier:
        return watcher.frontier + 1
    return max(watcher.confirmed + 1, watcher.frontier - _RESUME_BACK)


_RESUME_BACK = 10_000
"""The most revisions a reconnected watch reads again below its inferred frontier."""

_BATCH_REVISIONS = 1000
"""etcd sends the history of a watch catching up in batches of at most this many revisions;
a batch that has fewer is all of it, up to the batch's header revision."""


def _is_mark(parsed: tuple[str, str | None, str] | None) -> bool:
    """Whether a data key is a lease's mark (its delete marks its revision's deletes as expiries)."""
    return parsed is not None and parsed[0] == MARK


_TAKEN = 4096
"""How many recent changes an :class:`EtcdSource` remembers to drop one delivered twice."""

_SETTLE_AFTER = 0.2
"""Seconds a watch held below a lease's end waits for the stream to move it on before its
location's marks are read (see :meth:`~dfdb.drivers.etcd_watch.EtcdSource._settle`)."""

_HEAD_EVERY = 1.0
"""Seconds between reads of the store revision by a watch of an empty scope."""


class _Compacted(Exception):
    """A watcher's start revision was compacted (``revision``: the oldest one kept)."""

    def __init__(self, revision: int) -> None:
        super().__init__(revision)
        self.revision = revision


class _Resume(_Compacted):
    """A watch resumed below its frontier was compacted there: open the stream again,
    resuming it after its frontier."""
