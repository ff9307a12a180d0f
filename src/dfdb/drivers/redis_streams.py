"""The change source of the Redis driver: blocking reads of the change streams.

The driver hands its source a :class:`~dfdb.drivers.redis._SourceAccess`: the key
layout, the connection for blocking reads and the dataset's epoch; the source
reaches nothing else of the driver.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

import anyio
from redis import exceptions as rexc

from dfdb.drivers.base import RawEvent
from dfdb.drivers.sources import ReaderTaskSource
from dfdb.errors import BackendUnavailableError

if TYPE_CHECKING:
    from dfdb.drivers.redis import _SourceAccess

__all__ = ["NO_EPOCH", "RedisSource"]

log = logging.getLogger(__name__)

NO_EPOCH = "redis-unset"
"""The epoch of a dataset that has none yet, as seen by a user who may only read (writers
make one)."""

_READ_COUNT = 1000
"""Stream entries read per stream and round."""


class RedisSource(ReaderTaskSource):
    """Blocking ``XREAD`` on the subscribed streams from one position, merged in revision order.

    Each round trip also reads the counter (before the read), and each stream's trim
    watermark and the dataset's epoch (after it), so that lost history is announced. A lost
    connection is retried with backoff, resuming from the position. The blocking read
    runs in the source's reader task (a cancelled read would drop the connection).
    """

    _retryable = (BackendUnavailableError, rexc.ConnectionError, rexc.TimeoutError, OSError)

    def __init__(
        self,
        access: _SourceAccess,
        streams: builtins.list[str],
        position: int,
        tables: builtins.list[str],
        topics: Collection[str | None] | None,
    ) -> None:
        super().__init__(position, topics=topics, what="reading the redis streams")
        self._access = access
        self._streams = streams
        self._tables = tables
        self._ids = dict.fromkeys(streams, position)
        self._epoch = access.epoch
        self._grown = asyncio.Event()
        self._leases = True  # whether the last round saw leases on the server (reaped when so)

    @property
    def identity(self) -> str:
        """The dataset epoch this source follows (it moves to a new master term's epoch
        when that term holds everything read so far)."""
        return self._epoch

    def _resync(self, revision: int, epoch: str) -> RawEvent:
        self._read_position = revision
        self._ids = dict.fromkeys(self._streams, revision)
        self._epoch = epoch
        return RawEvent.resync(revision, epoch)

    async def _continues(self, epoch: str) -> bool:
        """Whether the dataset of ``epoch`` holds the history read so far (a first epoch, made by
        a writer, continues the empty dataset a reader who may not make one was following)."""
        if self._epoch == NO_EPOCH and not self._read_position:
            return True
        return await self._access.continues(self._epoch, epoch, self._read_position)

    async def _read_round(self) -> RawEvent | None:
        try:
            return await self._read_streams()
        except (rexc.AuthenticationError, rexc.AuthenticationWrongNumberOfArgsError, rexc.NoPermissionError) as exc:
            raise self._access.refused(exc) from None  # permanent: the stream ends with it, not retried

    async def _read_streams(self) -> RawEvent | None:
        access = self._access
        client = access.client()
        streams, asked = builtins.list(self._streams), dict(self._ids)  # add_topics may grow them meanwhile
        if self._leases:  # every watcher reaps the leases that are due
            await access.reap_due()
        pipe = client.pipeline(transaction=False)
        pipe.get(access.key("rev"))
        pipe.zcard(access.key("leases"))
        if streams:
            pipe.xread({s: f"{i}-0" for s, i in asked.items()}, count=_READ_COUNT, block=int(access.block * 1000))
            pipe.hmget(access.key("trim"), streams)
        else:  # a watch of no topic yet: nothing to read, caught up with the counter
            self._grown.clear()
        # the epoch after the read: the dataset may have changed while the read waited, and
        # what it returned may be the new one's, numbered anew (below the position)
        pipe.get(access.key("epoch"))
        replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if streams:
            raw_rev, leases, data, trims, raw_epoch = replies
        else:
            raw_rev, leases, raw_epoch = replies
            data, trims = None, []
            with anyio.move_on_after(access.block):  # until add_topics gives it a topic
                await self._grown.wait()
        self._leases = bool(leases)
        epoch = raw_epoch.decode() if raw_epoch else NO_EPOCH if self._epoch == NO_EPOCH else ""
        counter = int(raw_rev or 0)
        if epoch and epoch != self._epoch and await self._continues(epoch):
            log.debug("redis epoch %s continues %s past %d", epoch, self._epoch, self._read_position)
            self._epoch = epoch  # a new master term that holds everything read so far
        if epoch != self._epoch or counter < self._read_position:
            # another dataset, one that came back without its data, or a counter that went back
            fresh, now = await access.new_dataset(epoch, self._epoch)
            return self._resync(now, fresh)
        lost: dict[str, int] = {}  # stream -> the newest revision trimmed from it, past what we read
        for stream, trimmed in zip(streams, trims, strict=True):
            if trimmed is not None and int(trimmed if trimmed.isdigit() else 0) > asked[stream]:
                lost[stream] = int(trimmed)
        # a stream followed since this round began (add_topics) is read from its own position in
        # the next one: this round takes nothing past that position, lest it pass the stream's changes
        hold = min((self._ids[s] for s in self._streams if s not in asked), default=None)
        if not data:  # nothing after our ids, and the counter was read before: all read up to it
            reach = counter if hold is None else min(counter, hold)
            self._resync_trimmed(lost, reach)
            self._read_position = max(self._read_position, reach)
            return None
        per_stream: dict[str, builtins.list[tuple[int, dict[bytes, bytes]]]] = {}
        for raw_stream, entries in data:
            name = raw_stream.decode() if isinstance(raw_stream, bytes) else raw_stream
            per_stream[name] = [(int(eid.decode().split("-")[0]), fields) for eid, fields in entries]
            self.records_read += len(entries)
            self.bytes_read += sum(len(eid) + sum(len(k) + len(v) for k, v in f.items()) for eid, f in entries)
        full = [items[-1][0] for items in per_stream.values() if len(items) >= _READ_COUNT]
        cap = min(full) if full else None
        if lost and cap is not None and max(lost.values()) > cap:  # its place is past this round's reads
            log.debug("redis streams %s were trimmed past what was read; resync", sorted(lost))
            return self._resync(counter, epoch)
        if hold is not None:
            cap = hold if cap is None else min(cap, hold)
        merged: dict[int, RawEvent] = {}
        for name, items in per_stream.items():
            for revision, fields in items:
                if cap is not None and revision > cap:
                    break
                self._ids[name] = revision
                if revision not in merged:
                    merged[revision] = self._event(name, revision, fields)
        if cap is not None:
            for name in streams:
                self._ids[name] = max(self._ids[name], cap)
        if merged:
            self._read_position = max(self._read_position, max(merged))
            self._push_all(merged.values())
        # what this round read of every stream: up to the cap, else up to the read (at least the
        # counter read before it, and what it returned)
        self._resync_trimmed(lost, cap if cap is not None else max(counter, max(merged, default=0)))
        return None

    def _resync_trimmed(self, lost: dict[str, int], covered: int) -> None:
        """A ``resync`` of the scope of each stream trimmed past what was read (its table, and its
        topic for a topic's stream), in revision order at the newest revision it lost, or at
        ``covered`` when that is lower: every change of the other streams up to ``covered``
        was read in this round (or the whole watch is resynced instead, above), but a trim
        met after the read may have discarded changes written after it, while the other
        streams' changes of that time wait for the next round. The stream is read on after
        the newest revision it lost."""
        for stream, last in lost.items():
            log.debug("redis stream %s was trimmed up to %d; resync of its scope", stream, last)
            table, _, rest = stream[len(self._access.key("s")) + 1 :].partition("/")
            topic = rest[2:] if rest.startswith("t/") else None  # None: the whole table (or its topic-less part)
            place = min(last, covered)
            self._ids[stream] = max(self._ids[stream], last)
            self._read_position = max(self._read_position, place)
            self._push(RawEvent("resync", table, "", topic, None, place))

    def _event(self, stream: str, revision: int, fields: dict[bytes, bytes]) -> RawEvent:
        """The event of one stream entry; an entry that cannot be read yields a resync of its table."""
        try:
            action = fields[b"a"].decode()
            table = fields[b"b"].decode()
            id = fields[b"i"].decode()
            topic = fields[b"p"].decode() or None
            value = fields[b"v"]
        except (KeyError, UnicodeDecodeError):
            reason = f"fields {sorted(k.decode(errors='replace') for k in fields)}"
            return self._malformed(self._access.stream_table(stream), f"{stream} {revision}-0", revision, reason)
        if action not in ("create", "update", "delete"):
            return self._malformed(table, f"{table}/{id}", revision, f"unknown action {action!r}")
        expired = fields.get(b"x") == b"1"  # a lease's object, deleted when the lease ended
        # the epoch it was read in: a stream that went on into a new master term moves its cursor there
        return RawEvent(action, table, id, topic, value, revision, self._epoch, expired)  # type: ignore[arg-type]

    async def _follow(self, topics: frozenset[str | None], since: int) -> None:
        access = self._access
        for table in self._tables:
            for topic in topics:
                key = access.key("s", table, "n") if topic is None else access.key("s", table, "t", topic)
                if key not in self._ids:
                    self._streams.append(key)
                    self._ids[key] = since  # read from `since`: the topic's earlier changes come first
        self._grown.set()
