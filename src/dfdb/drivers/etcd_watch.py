"""The change source of the etcd driver: prefix watches on one gRPC stream.

The driver hands its source a :class:`~dfdb.drivers.etcd._WatchAccess`: the key
layout, connections of the source's own, the dataset's identity and the store
revision; the source reaches nothing else of the driver.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections import deque
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import anyio
import grpc
from aetcd import rpc

from dfdb.drivers.base import RawAction, RawEvent
from dfdb.drivers.etcd_calls import _finished
from dfdb.drivers.etcd_leases import MARK
from dfdb.drivers.etcd_watchers import (
    _BATCH_REVISIONS,
    _HEAD_EVERY,
    _SETTLE_AFTER,
    _TAKEN,
    _Compacted,
    _is_mark,
    _range_end,
    _Resume,
    _resume_at,
    _Watcher,
)
from dfdb.drivers.sources import ReaderTaskSource
from dfdb.errors import AuthenticationError, BackendUnavailableError, DfdbError
from dfdb.retry import checkpoint_if_cancelled

if TYPE_CHECKING:
    from dfdb.drivers.etcd import _WatchAccess

__all__ = ["EtcdSource"]

log = logging.getLogger(__name__)


class EtcdSource(ReaderTaskSource):
    """Prefix watches on one gRPC stream, resumed from their own revisions after a disconnect.

    ``position`` says up to where every change has been returned: the lowest
    frontier of the watches, below anything still buffered. A watch's frontier moves
    with its own replies: events sent as they happen carry their own revision; the
    history of a watch catching up (after a reconnect, from a cursor, or a topic just
    added) comes in batches whose header is the store's revision, and a batch of fewer
    than etcd's 1000 revisions is the whole history up to it; a progress notification
    carries the revision the watch is at. Since etcd sends the events of the watches of
    one stream that are in sync in revision order, an event at revision ``r`` of one
    watch also moves every other in-sync watch to ``r``: a dfdb write changes one data
    key. A lease's end (etcd deletes every key bound to it, in every topic, in one
    revision; the delete of the lease's mark in each topic tells it) moves them only to
    ``r - 1``, since their own changes of ``r`` may follow: they are returned as they
    come (as old as the ones returned, not older), and the cursor passes ``r`` only once
    every watch is past it: by a reply of its own, or, for a watch whose location held
    no mark of the lease just before ``r`` (it has no change of ``r``), by a read of that
    mark (:meth:`_settle`). A watch is known to be in sync when it was created above the
    store's revision, or once a reply of its own says so.

    A frontier moved by another watch's reply is an inference: ``confirmed`` is where the
    watch's own replies took it. etcd may set a watch aside (a "victim") when the stream
    is too slow to take its changes, send other watches' later changes meanwhile, and the
    set-aside ones later; a reply that starts below the watch's frontier shows it (or, on
    etcd 3.4 before 3.4.25, a progress notification sent ahead of held-back changes):
    the watch is no longer taken as in sync, and its changes below that frontier are late
    (a ``resync`` of its topic stands for them, see below). A watch created again after a
    disconnect starts after ``confirmed``, not after its frontier (at most 10,000
    revisions earlier, and on the frontier itself at least: a revision may change keys of
    several topics), so that nothing inferred is skipped; what it delivered already is
    dropped by (revision, key). A topic added from a cursor older than events returned
    already cannot come in order either: its changes below them are late in the same way.

    The watches catch up on their own, each in its own batches, so one watch may send
    newer revisions before another sends older ones: an object deleted under one topic
    and created again under another would arrive newest first, and its older changes
    would then be dropped as duplicates of the newer one. So a buffered event is
    returned only once every watch is past its revision (:meth:`_release_up_to`): the
    merge is in revision order, and the cursor of each event is its own revision. What
    is left: a cursor read in the moment between a victim's set-aside and the reply that
    shows it may pass the victim's changes (a stream resumed from it misses them; the
    stream that read it delivers a ``resync`` of the topic). Nothing tells a set-aside
    watch from an idle one sooner: a progress request is answered for the whole stream
    (and, before etcd 3.4.25 and 3.5.8, ahead of changes still held back), a range read
    does not see a key created and deleted in between, and a cursor moved only by each
    watch's own replies would stand, for a quiet topic, until its progress notification.
    A watch with nothing to catch up says so only with etcd's next progress notification
    (``--experimental-watch-progress-notify-interval``, 10 minutes by default), so an
    event is held at most about ``watch_hold`` seconds (the URL option, default 1): then
    every buffered event is returned (a forced release, counted in
    :attr:`forced_releases`), and each watch not past them remembers the highest
    revision returned beyond it. A later change of such a watch below that revision is
    not returned (it may be an older change of a key returned already): a ``resync`` of
    the watch's topic, one per table, takes its place, so a Replica relists the topic;
    the watch's changes above that revision follow as usual.
    The stream is read by the source's reader task and written by its writer task
    (requests queued in order): gRPC ends the whole stream when a read or a write is
    cancelled, so no caller of the source reads or writes the stream itself, and
    ``add_topics`` has no await point at which a cancellation could interrupt it.
    """

    _retryable = (TimeoutError, grpc.aio.AioRpcError, BackendUnavailableError)

    def __init__(
        self, access: _WatchAccess, tables: builtins.list[str], topics: Collection[str | None] | None, since: int
    ) -> None:
        super().__init__(since, topics=topics, what="reading the etcd watch")
        self._access = access
        self._tables = set(tables)
        self._watchers: dict[int, _Watcher] = {}
        self._next_id = 1
        if topics is None:
            self._add(None, access.every_topic(), since)
        else:
            for topic in sorted(topics, key=lambda t: (t is None, t or "")):
                self._add(topic, access.topic_prefix(topic), since)
        self._conn = access.endpoints()
        self._call: Any = None
        self._outbox: deque[tuple[Any, Any]] = deque()  # (stream, request), written in order
        self._writer: asyncio.Task[None] | None = None
        self._settling: set[asyncio.Task[None]] = set()  # reads that move watches past a lease's end
        self._identity = access.known_identity
        self._taken: dict[tuple[int, bytes], None] = {}  # the changes buffered lately, oldest first
        self._head = since
        """While no watch is created (an empty scope): the store revision last read."""
        self._grown = asyncio.Event()  # a watch was added to an empty scope
        self._hold = access.hold
        self._held_since: float | None = None  # when the oldest event held back was buffered
        self._pushed = 0  # the highest revision buffered
        self._forced = 0  # a forced release returns every buffered event up to here
        self._returned = 0  # the highest revision of an event returned
        self.forced_releases = 0
        """How many times events waited ``watch_hold`` seconds for a watch catching up and
        were returned without it (see the class docstring)."""

    def _add(self, topic: str | None, prefix: bytes, since: int) -> _Watcher:
        watcher = _Watcher(self._next_id, topic, prefix, since, since)
        self._watchers[watcher.watch_id] = watcher
        self._next_id += 1
        return watcher

    def _read_up_to(self) -> int:
        return min((w.frontier for w in self._watchers.values()), default=self._head)

    def _limit(self) -> int:
        """Buffered events up to here are returned: no watch can send an older change (a
        watch just below a revision of several topics may send its changes of it still:
        they are as old as those returned, not older)."""
        reach = (w.frontier + (w.shared == w.frontier + 1) for w in self._watchers.values())
        return max(min(reach, default=self._head), self._forced)

    def _release_up_to(self) -> int:
        limit = self._limit()
        if self._pushed <= limit:  # nothing held back
            self._held_since = None
            return limit
        now = asyncio.get_running_loop().time()
        if self._held_since is None:
            self._held_since = now
        if now < self._held_since + self._hold:
            return limit
        return self._force_release(limit)

    def _push(self, event: RawEvent) -> None:
        super()._push(event)
        if event.revision > self._pushed:
            self._pushed = event.revision
            if self._held_since is None and event.revision > self._limit():
                self._held_since = asyncio.get_running_loop().time()

    def _release_deadline(self) -> float | None:
        return None if self._held_since is None else self._held_since + self._hold

    def _force_release(self, limit: int) -> int:
        """The buffered events waited ``hold`` seconds for the watches below them: return
        them all, and remember in each such watch what was returned past it."""
        last = self._pushed
        lagging = [w for w in self._watchers.values() if w.frontier < last]
        for watcher in lagging:
            watcher.released = max(watcher.released, last)
        self._forced = last
        self._held_since = None
        self.forced_releases += 1
        log.info(
            "etcd watch on %s: changes up to revision %d waited %gs for the watch(es) of topic(s) %s"
            " (at revision %d) to catch up; returning them (an older change of those topics"
            " arriving later resyncs its topic)",
            self._conn.target,
            last,
            self._hold,
            ", ".join(repr(w.topic) for w in lagging),
            limit,
        )
        return last

    @property
    def target(self) -> str:
        """The member this source reads from."""
        return self._conn.target

    def _reached(self, watcher: _Watcher, revision: int, others: int) -> None:
        """``watcher`` delivered everything up to ``revision``; every other in-sync watch
        everything up to ``others``."""
        watcher.frontier = max(watcher.frontier, revision)
        watcher.confirmed = max(watcher.confirmed, revision)
        if watcher.synced:
            for other in self._watchers.values():
                if other.synced and other.frontier <= others and other is not watcher:
                    other.frontier = others
                    if others < revision:
                        other.shared = revision

    def _settle(self, revision: int, leases: set[str]) -> None:
        """The end of ``leases`` at ``revision`` holds the other watches just below it, since
        their own deletes of it may follow. A watch whose topic held no key of those leases
        (no mark of theirs in its location just before) has none: a read of the marks moves
        it past ``revision`` at once, instead of at its next progress notification (10
        minutes by default). A read that fails leaves it to that notification."""
        waiting = [w for w in self._watchers.values() if w.frontier == revision - 1 and w.shared == revision]
        if waiting and leases:
            task = asyncio.get_running_loop().create_task(
                self._settle_marks(revision, sorted(leases), waiting), name="dfdb-EtcdSource-settle"
            )
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _settle_marks(self, revision: int, leases: builtins.list[str], waiting: builtins.list[_Watcher]) -> None:
        await asyncio.sleep(_SETTLE_AFTER)  # a busy stream moves them past it meanwhile: no read then
        for watcher in waiting:
            if watcher.frontier != revision - 1 or watcher.shared != revision:
                continue
            marks = [watcher.prefix + MARK.encode() + b"/" + lease.encode() for lease in leases]
            try:
                bound = [await self._access.exists_at(mark, revision - 1) for mark in marks]
            except (DfdbError, TimeoutError) as exc:  # unreachable, compacted, closed: its progress tells
                log.debug("etcd watch %d: the marks at revision %d: %s", watcher.watch_id, revision - 1, str(exc))
                return
            if any(bound) or self._watchers.get(watcher.watch_id) is not watcher:
                continue
            if watcher.frontier == revision - 1 and watcher.shared == revision:
                watcher.frontier = revision
                if watcher.confirmed == revision - 1:  # read, not inferred: a reconnect need not read r again
                    watcher.confirmed = revision

    # ------------------------------------------------------------ stream
    async def start(self) -> None:
        """Open the stream and create every watcher; subscribed when this returns."""
        failures = 0
        while True:
            try:
                await self._open_stream()
                return
            except _Resume:
                await self._drop_stream(failover=False)
            except _Compacted:  # resuming from a compacted revision: say so first
                self._push(await self._restart_all(await self._access.current_revision()))
            except (TimeoutError, grpc.aio.AioRpcError, BackendUnavailableError) as exc:
                await checkpoint_if_cancelled()
                await self._drop_stream(failover=True)
                if failures >= 3:
                    raise BackendUnavailableError(f"{self._access.url}: cannot open a watch: {exc}") from None
                await self._backoff.pause(failures, "opening the etcd watch", exc)
                failures += 1

    async def _open_stream(self) -> None:
        conn = self._conn
        await conn.connect()
        log.debug("opening an etcd watch stream on %s", conn.target)
        self._call = conn.watch.Watch(metadata=conn.metadata(("hasleader", "true")))
        for watcher in self._watchers.values():
            self._create(watcher)
        async with asyncio.timeout(self._access.timeout * 3):
            while not all(w.created for w in self._watchers.values()):
                await self._read_one()

    def _create(self, watcher: _Watcher) -> None:
        """Queue the request that creates ``watcher`` on the current stream."""
        watcher.created = watcher.synced = False
        request = rpc.WatchCreateRequest(
            key=watcher.prefix,
            range_end=_range_end(watcher.prefix),
            start_revision=_resume_at(watcher),
            progress_notify=True,
            prev_kv=True,
            watch_id=watcher.watch_id,
        )
        self._outbox.append((self._call, rpc.WatchRequest(create_request=request)))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_out(), name="dfdb-EtcdSource-writer")

    async def _write_out(self) -> None:
        """The writer task: write the queued requests of the current stream, in order, then end.
        A request of a stream dropped meanwhile is void: the next stream creates every watcher."""
        while self._outbox:
            call, request = self._outbox.popleft()
            if call is not self._call:
                continue
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.CancelledError) as exc:
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                    raise  # the source is closing
                # the stream broke (the reader finds out and opens a new one, creating every watcher)
                log.debug("writing to the etcd watch stream on %s failed: %s", self._conn.target, repr(exc))

    async def _drop_stream(self, *, failover: bool) -> None:
        call, self._call = self._call, None
        for watcher in self._watchers.values():
            watcher.synced = False
        if call is not None:
            call.cancel()
        if failover:
            await self._conn.failover()

    async def _read_one(self) -> None:
        """Read one response and apply it."""
        call = self._call
        url = self._access.url
        if call is None:
            raise BackendUnavailableError(f"{url}: the watch stream was dropped")
        try:
            reply = await call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise BackendUnavailableError(f"{url}: the watch stream was dropped") from None
        if reply is grpc.aio.EOF:
            raise BackendUnavailableError(f"{url}: the watch stream ended")
        watcher = self._watchers.get(reply.watch_id)
        if reply.compact_revision:
            compacted = int(reply.compact_revision)
            if watcher is not None and watcher.confirmed < watcher.frontier and compacted <= watcher.frontier + 1:
                watcher.confirmed = watcher.frontier  # what it read again below its frontier is gone: not that
                raise _Resume(compacted)
            raise _Compacted(compacted)
        if reply.canceled:
            if "permission denied" in reply.cancel_reason:  # the role lost the prefix (watch id -1 at times)
                raise AuthenticationError(f"{url}: not allowed: {reply.cancel_reason} (check the user's role)")
            if watcher is None:
                return  # a watcher this source cancelled
            raise BackendUnavailableError(f"{url}: watch cancelled: {reply.cancel_reason or 'no reason'}")
        if watcher is None:
            return  # a progress broadcast (-1), which etcd 3.4 may send ahead of pending events
        header = int(reply.header.revision)
        if reply.created:
            watcher.created = True
            watcher.synced = watcher.frontier >= header  # created above the store's revision
            return
        if not reply.events:  # a progress notification: sent to in-sync watches only
            watcher.synced = True
            self._reached(watcher, header, header)
            return
        self.records_read += len(reply.events)
        self.bytes_read += reply.ByteSize()
        last = watcher.frontier
        # a lease's end deletes its mark with its objects, in one revision (one reply)
        marks: builtins.list[tuple[int, str]] = []  # (revision, lease) of each mark deleted
        for ev in reply.events:
            parsed = self._access.parse_data_key(bytes(ev.kv.key)) if ev.type == rpc.Event.DELETE else None
            if parsed is not None and _is_mark(parsed):
                marks.append((int(ev.kv.mod_revision), parsed[2]))
        expired = {revision for revision, _ in marks}
        oldest = min(int(ev.kv.mod_revision) for ev in reply.events)
        if oldest < watcher.frontier:
            self._behind(watcher, oldest)
        revisions: set[int] = set()
        for ev in reply.events:
            revision = self._take(watcher, ev, expired)
            revisions.add(revision)
            last = max(last, revision)
        others = last - 1 if last in expired else last  # a lease's end deletes keys of other topics too
        if header >= last and len(revisions) < _BATCH_REVISIONS:
            # sent as it happened (the header is the event's revision), or the whole history
            # of a watch catching up, which etcd then sends as it happens
            watcher.synced = True
            if header > last:  # every change up to the header was sent before this batch
                last = others = header
        self._reached(watcher, last, others)
        if others < last:
            self._settle(last, {lease for revision, lease in marks if revision == last})

    def _take(self, watcher: _Watcher, ev: Any, expired: set[int]) -> int:
        """Buffer one etcd event of ``watcher`` (a delete at a revision in ``expired`` is a
        lease's expiry); returns its revision."""
        kv = ev.kv
        revision = int(kv.mod_revision)
        key = bytes(kv.key)
        if (revision, key) in self._taken:  # a change one watch (or a watch's earlier stream) gave already
            return revision
        self._taken[revision, key] = None
        if len(self._taken) > _TAKEN:
            del self._taken[next(iter(self._taken))]
        parsed = self._access.parse_data_key(key)
        if parsed is None:
            table = self._access.table_of(key)
            if table is None:  # no table's record: nothing to make whole
                self._count_malformed(None, repr(key), revision, "not a dfdb data key", "skipped")
            elif table in self._tables:
                self._push(self._malformed(table, repr(key), revision, "not a dfdb data key"))
            return revision
        table, topic, id = parsed
        if table not in self._tables:
            return revision
        if revision < watcher.released:  # older than changes a forced release returned
            self._resync_late(watcher, revision)
            return revision
        if ev.type == rpc.Event.DELETE:
            value = bytes(ev.prev_kv.value) if ev.prev_kv.key else None  # empty KeyValue when compacted
            self._push(RawEvent("delete", table, id, topic, value, revision, None, revision in expired))
        else:
            action: RawAction = "create" if kv.version == 1 else "update"
            self._push(RawEvent(action, table, id, topic, bytes(kv.value), revision))
        return revision

    def _behind(self, watcher: _Watcher, oldest: int) -> None:
        """A reply of ``watcher`` starts at ``oldest``, below its frontier: etcd set the watch
        aside (a "victim": the stream was too slow to take its changes) while it sent other
        watches' later ones, or (etcd 3.4 before 3.4.25) sent a progress notification ahead
        of changes it held back. Changes newer than these may have been returned, so they
        are late: the watch is not in sync, and its changes below its frontier are answered
        with a ``resync`` of its topic (see :meth:`_resync_late`)."""
        log.debug(
            "etcd watch %d: a reply from revision %d, below its frontier %d (confirmed up to %d)",
            watcher.watch_id,
            oldest,
            watcher.frontier,
            watcher.confirmed,
        )
        watcher.synced = False
        watcher.released = max(watcher.released, watcher.frontier)

    def _resync_late(self, watcher: _Watcher, revision: int) -> None:
        """A change of ``watcher`` older than changes a forced release returned: it may be
        an older change of a key returned already (one that moved topic), which would be
        dropped as a duplicate. It is not returned; the watch's topic is resynced instead
        (once per forced release), continuing from the revision returned past it."""
        if watcher.resynced >= watcher.released:
            return
        watcher.resynced = watcher.released
        log.info(
            "etcd watch on %s: a change of topic %r at revision %d arrived after revision %d"
            " was returned; resyncing the topic",
            self._conn.target,
            watcher.topic,
            revision,
            watcher.released,
        )
        for table in sorted(self._tables):
            self._push(RawEvent("resync", table, "", watcher.topic, None, watcher.released))

    async def _read_round(self) -> RawEvent | None:
        if not self._watchers:
            await self._follow_head()
            return None
        try:
            if self._call is None:
                await self._open_stream()
                resync = await self._check_dataset()
                if resync is not None:
                    return resync
            await self._read_one()
        except _Resume:
            await self._drop_stream(failover=False)  # the next round opens the stream again
        except _Compacted:
            return await self._restart_all(await self._access.current_revision())
        return None

    async def _follow_head(self) -> None:
        """A round of an empty scope (no watch, no stream): nothing to read, so caught up with
        the store revision; then wait for a topic, at most a second. (Whether the dataset is
        still the one followed is checked when a topic opens the stream.)"""
        self._grown.clear()
        revision = await self._access.current_revision()
        self._head = max(self._head, revision)
        with anyio.move_on_after(_HEAD_EVERY):
            await self._grown.wait()

    async def _after_failure(self, exc: BaseException) -> None:
        log.debug("etcd watch on %s failed (%s); reconnecting", self._conn.target, str(exc))
        await self._drop_stream(failover=True)

    async def _check_dataset(self) -> RawEvent | None:
        """After reconnecting: a dataset that lost its data (or is another one) yields resync."""
        identity = await self._access.identity()
        revision = await self._access.current_revision()
        if identity == self._identity and revision >= self.position:
            return None
        self._identity = identity
        log.debug("etcd dataset changed (identity %s, revision %d); resync", identity, revision)
        return await self._restart_all(revision, identity)

    async def _restart_all(self, revision: int, identity: str | None = None) -> RawEvent:
        """History is gone: forget buffered events, follow every watcher from ``revision``
        on a new stream, and return the ``resync`` event that says so."""
        await self._drop_stream(failover=False)
        self._clear_buffer()
        self._taken.clear()  # another dataset may number its changes alike
        self._head = revision
        self._forced = self._pushed = 0
        self._held_since = None
        for watcher in self._watchers.values():
            watcher.frontier = watcher.confirmed = revision
            watcher.released = watcher.resynced = 0
        return RawEvent.resync(revision, identity)

    async def __anext__(self) -> RawEvent:
        event = await super().__anext__()
        self._returned = max(self._returned, event.revision)
        return event

    async def _follow(self, topics: frozenset[str | None], since: int) -> None:
        """Add a watch per topic from ``since``. Its changes older than events returned
        already cannot come in revision order: like late changes after a forced release,
        they are answered with a ``resync`` of the topic (see :meth:`_resync_late`)."""
        # no await point: a cancelled caller cannot leave a watcher half added
        for topic in sorted(topics, key=lambda t: (t is None, t or "")):
            watcher = self._add(topic, self._access.topic_prefix(topic), since)
            if self._returned > since:
                watcher.released = self._returned
            if self._call is not None:  # else the next read opens the stream with it
                self._create(watcher)
        self._grown.set()

    async def _release(self) -> None:
        writer, self._writer = self._writer, None
        tasks = {task for task in (writer, *self._settling) if task is not None}
        self._outbox.clear()
        call = self._call
        try:
            await self._drop_stream(failover=False)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            if call is not None:
                await _finished(call, self._access.timeout)
        finally:
            await self._conn.close()
