"""The node layout: paths, the change records, and the change logs' buckets, rotation and
pruning, each encoded and decoded here only.

Under the chroot ``/P``, ``LOC`` being ``t/TOPIC`` or ``n`` (topic-less) and ``SS`` a
shard of the id (two hex digits of its hash, so no parent has more children than one
``getChildren`` reply carries)::

    /P/identity                   this dataset's identity
    /P/i/TABLE/SS/ID              the index: LOC (ids are unique across topics)
    /P/d/TABLE/LOC/SS/ID          the value
    /P/l/TABLE/LOC                a change log: {"b": current bucket, "trim": highest pruned revision}
    /P/l/TABLE/LOC/bK/cSEQ        one change: action, id, value; its czxid is its revision
    /P/k/TABLE                    allocate_unique_key: its version counts the keys given
    /P/le/LEASE[/TABLE+ID]        leases and their objects (see :mod:`.leases`)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from dfdb.drivers.base import RawAction
from dfdb.drivers.zookeeper.client import Calls
from dfdb.errors import BackendUnavailableError

__all__ = ["Change", "ChangeLogs", "Layout", "LogMeta", "MalformedChange", "Pruned", "location", "topic_of"]

log = logging.getLogger(__name__)

_ACTIONS: dict[bytes, RawAction] = {b"c": "create", b"u": "update", b"d": "delete"}
_CODES = {v: k for k, v in _ACTIONS.items()}
MULTI_OPS = 1000
"""The most operations dfdb puts in one ``multi``."""
READ_AHEAD = 32
"""Change nodes read in one go."""


def location(topic: str | None) -> str:
    """The ``LOC`` of a topic."""
    return "n" if topic is None else f"t/{topic}"


def storable(name: str) -> bool:
    """Whether ZooKeeper takes ``name`` as a node's name: it refuses control characters,
    U+D800 to U+F8FF, U+FFF0 to U+FFFF and, as Java holds them as surrogate pairs, every
    character beyond U+FFFF."""
    return not any(o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xF8FF or o >= 0xFFF0 for o in map(ord, name))


def topic_of(loc: str) -> str | None:
    """The topic of a ``LOC``."""
    return None if loc == "n" else loc[2:]


def is_location(loc: str) -> bool:
    """Whether an index node's data is a ``LOC``."""
    return loc == "n" or loc.startswith("t/")


class MalformedChange(ValueError):
    """A change node dfdb cannot read."""


@dataclass(frozen=True, slots=True)
class Change:
    """One change node's content: ``ACTION\\nID\\nVALUE`` (``x``: a delete when a lease ended)."""

    action: RawAction
    id: str
    value: bytes
    expired: bool = False

    def encode(self) -> bytes:
        code = b"x" if self.expired else _CODES[self.action]
        return code + b"\n" + self.id.encode() + b"\n" + self.value

    @classmethod
    def decode(cls, data: bytes) -> Change:
        """Raises:
        MalformedChange: not a change dfdb wrote."""
        code, sep, rest = data.partition(b"\n")
        raw_id, sep2, value = rest.partition(b"\n")
        action = _ACTIONS.get(b"d" if code == b"x" else code)
        if action is None or not sep or not sep2:
            raise MalformedChange(f"unknown action {code[:20]!r}" if action is None else "truncated")
        try:
            id = raw_id.decode()
        except UnicodeDecodeError:
            raise MalformedChange("the id is not UTF-8") from None
        if not id:
            raise MalformedChange("no id")
        return cls(action, id, value, code == b"x")


@dataclass(frozen=True, slots=True)
class LogMeta:
    """A change log node's content: the bucket written now, the highest pruned revision."""

    bucket: int = 0
    trim: int = 0

    def encode(self) -> bytes:
        return json.dumps({"b": self.bucket, "trim": self.trim}).encode()

    @classmethod
    def decode(cls, data: bytes) -> LogMeta:
        meta = json.loads(data or b"{}")
        return cls(int(meta.get("b", 0)), int(meta.get("trim", 0)))


class Pruned(Exception):
    """History after the requested position was pruned, up to ``trim``."""

    def __init__(self, trim: int) -> None:
        super().__init__(f"pruned up to {trim}")
        self.trim = trim


@dataclass(frozen=True, slots=True)
class Layout:
    """The paths under the chroot ``root``."""

    root: str

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    @property
    def identity(self) -> str:
        return self.path("identity")

    @staticmethod
    def shard(id: str) -> str:
        return hashlib.blake2s(id.encode(), digest_size=1).hexdigest()

    def index(self, table: str, id: str) -> str:
        return self.path("i", table, self.shard(id), id)

    def data_scope(self, table: str, loc: str) -> str:
        """The parent of the shards of one LOC's data nodes."""
        return self.path("d", table, loc)

    def data(self, table: str, loc: str, id: str) -> str:
        return self.path("d", table, loc, self.shard(id), id)

    @property
    def logs(self) -> str:
        """The parent of every table's logs."""
        return self.path("l")

    def log(self, table: str, loc: str) -> str:
        return self.path("l", table, loc)

    def topic_logs(self, table: str) -> str:
        """The parent of a table's per-topic logs."""
        return self.path("l", table, "t")

    def key_counter(self, table: str) -> str:
        return self.path("k", table)

    @staticmethod
    def bucket(log_path: str, bucket: int) -> str:
        return f"{log_path}/b{bucket:010d}"

    @staticmethod
    def bucket_number(name: str) -> int:
        """The number of a bucket node named ``name``."""
        return int(name[1:])

    @staticmethod
    def change(bucket_path: str, seq: int) -> str:
        return f"{bucket_path}/c{seq:010d}"

    @staticmethod
    def change_prefix(bucket_path: str) -> str:
        """The path of a sequential create of the next change."""
        return f"{bucket_path}/c"

    @staticmethod
    def seq_of(change_path: str) -> int:
        return int(change_path.rsplit("/c", 1)[1])


@dataclass(slots=True)
class Cursor:
    """A reading position in a change log: the next change is ``bucket``/``seq``."""

    bucket: int = 0
    seq: int = 0


class ChangeLogs:
    """The change logs on the server: their state as writers see it, rotation, pruning,
    and reading a log between two revisions.

    A bucket holds ``bucket_size`` changes (sequence counters are per parent); a writer
    that fills one moves the log to the next, and logs keep ``keep`` buckets: older ones
    are pruned, the highest pruned revision written in the same ``multi`` as the deletes.
    """

    def __init__(self, calls: Calls, layout: Layout, bucket_size: int, keep: int) -> None:
        self.calls = calls
        self.layout = layout
        self.bucket_size = bucket_size
        self.keep = keep
        self._states: dict[str, tuple[LogMeta, int]] = {}  # log path -> (meta, node version)

    async def read_meta(self, log_path: str, watch: bool = False) -> tuple[LogMeta, int] | None:
        """A log's meta and node version, ``None`` when it has none yet."""
        return (await self.read_meta_at(log_path, watch))[1]

    async def read_meta_at(self, log_path: str, watch: bool = False) -> tuple[int, tuple[LogMeta, int] | None]:
        """:meth:`read_meta`, with the zxid the server had applied when it read it (0: no log)."""
        zxid, found = await self.calls.get_at(log_path, watch=watch)
        return zxid, None if found is None else (LogMeta.decode(found[0]), int(found[1].version))

    async def state(self, log_path: str, *, fresh: bool = False) -> tuple[LogMeta, int]:
        """(meta, version) of a log, creating the log when absent."""
        if not fresh and log_path in self._states:
            return self._states[log_path]
        for attempt in range(10):
            found = await self.read_meta(log_path)
            if found is not None:
                self._states[log_path] = found
                return found
            await self.calls.ensure(log_path.rsplit("/", 1)[0], gone=attempt > 0)
            await self.calls.multi(  # fails as a whole when another writer made it first
                [
                    self.calls.create(log_path, LogMeta().encode()),
                    self.calls.create(self.layout.bucket(log_path, 0), b""),
                ]
            )
        raise BackendUnavailableError(f"{self.calls.url}: cannot create the change log {log_path}")

    def forget(self, log_path: str) -> None:
        """The log moved on (or is gone): read its state again before the next write."""
        self._states.pop(log_path, None)

    def append(self, log_path: str, meta: LogMeta, change: Change) -> Any:
        """The create request that appends ``change`` to the log's current bucket."""
        return self.calls.create(self.layout.change_prefix(self.layout.bucket(log_path, meta.bucket)),
                                 change.encode(), sequential=True)  # fmt: skip

    async def after_append(self, log_path: str, change_path: str) -> None:
        """Move a full log to its next bucket, and prune the buckets it no longer keeps."""
        if self.layout.seq_of(change_path) + 1 < self.bucket_size:
            return
        meta, version = await self.state(log_path, fresh=True)
        if not change_path.startswith(self.layout.bucket(log_path, meta.bucket) + "/"):
            return  # someone else moved it already
        if await self.rotate(log_path, meta, version):
            await self.prune(log_path, meta.bucket + 2 - self.keep)  # the new bucket and keep - 1 before it

    async def rotate(self, log_path: str, meta: LogMeta, version: int) -> bool:
        """Move the log to its next bucket; ``False`` when another writer did."""
        replies = await self.calls.multi(
            [
                self.calls.set(log_path, LogMeta(meta.bucket + 1, meta.trim).encode(), version),
                self.calls.create(self.layout.bucket(log_path, meta.bucket + 1), b""),
            ]
        )
        self.forget(log_path)
        moved = not any(isinstance(r, Exception) for r in replies)
        if moved:
            log.debug("change log %s moved to bucket %d", log_path, meta.bucket + 1)
        return moved

    async def prune(self, log_path: str, below: int) -> None:
        """Delete every bucket numbered below ``below``, recording the highest revision deleted."""
        calls = self.calls
        for name in await calls.children(log_path):
            if self.layout.bucket_number(name) >= below:
                continue
            bucket_path = f"{log_path}/{name}"
            children = await calls.children(bucket_path)
            for start in range(0, len(children) + 1, MULTI_OPS):
                chunk = children[start : start + MULTI_OPS]
                last = await calls.get(f"{bucket_path}/{chunk[-1]}") if chunk else None
                for _ in range(20):
                    meta, version = await self.state(log_path, fresh=True)
                    trim = meta.trim if last is None else max(meta.trim, int(last[1].created_zxid))
                    ops = [calls.set(log_path, LogMeta(meta.bucket, trim).encode(), version)]
                    ops += [calls.delete(f"{bucket_path}/{c}", -1) for c in chunk]
                    if start + MULTI_OPS >= len(children):
                        ops.append(calls.delete(bucket_path, -1))
                    replies = await calls.multi(ops)
                    if not any(isinstance(r, Exception) for r in replies):
                        break
                    if not isinstance(replies[0], Exception):
                        break  # pruned by someone else meanwhile
                self.forget(log_path)
            log.debug("change log %s: bucket %s pruned", log_path, name)

    async def compact(self) -> None:
        """Move every log to a new bucket and prune all the others."""
        for table in await self.calls.children(self.layout.logs):
            for loc in await self.locations(table):
                log_path = self.layout.log(table, loc)
                meta, version = await self.state(log_path, fresh=True)
                if await self.rotate(log_path, meta, version):
                    await self.prune(log_path, meta.bucket + 1)

    async def locations(self, table: str, watch: bool = False) -> list[str]:
        """Every LOC of ``table`` that has a change log (with ``watch``, a new topic's log
        fires a children watch on :meth:`Layout.topic_logs`)."""
        topics = await self.calls.children(self.layout.topic_logs(table), watch=watch)
        locs = [location(t) for t in topics]
        if await self.calls.exists(self.layout.log(table, "n")) is not None:
            locs.append("n")
        return locs

    async def seek(self, log_path: str, since: int) -> Cursor:
        """The position of the log's first change after ``since`` (binary search by czxid).

        Raises:
            Pruned: changes after ``since`` were pruned.
        """
        calls, layout = self.calls, self.layout
        found = await self.read_meta(log_path)
        if found is None:
            return Cursor()
        meta = found[0]
        if since < meta.trim:
            raise Pruned(meta.trim)
        buckets = [layout.bucket_number(n) for n in await calls.children(log_path)]
        chosen = buckets[0] if buckets else meta.bucket  # the last bucket made at or before `since`
        for number in buckets:
            stat = await calls.get(layout.bucket(log_path, number))
            if stat is not None and int(stat[1].created_zxid) > since:
                break
            chosen = number
        bucket_path = layout.bucket(log_path, chosen)
        stat = await calls.get(bucket_path)
        size = int(stat[1].child_version) if stat is not None else 0
        low, high = 0, size
        while low < high:  # the first sequence number whose change is after `since`
            mid = (low + high) // 2
            got = await calls.get(layout.change(bucket_path, mid))
            if got is None or int(got[1].created_zxid) > since:
                high = mid
            else:
                low = mid + 1
        return Cursor(chosen, low)

    async def read_batch(self, log_path: str, at: Cursor, count: int = READ_AHEAD) -> list[tuple[bytes, Any]]:
        """The changes at ``at`` and after it in its bucket, up to ``count`` of them
        (fewer: the bucket ends there for now); ``at`` is not moved."""
        bucket_path = self.layout.bucket(log_path, at.bucket)
        paths = [self.layout.change(bucket_path, at.seq + k) for k in range(count)]
        found = await asyncio.gather(*(self.calls.get(p) for p in paths))
        batch = []
        for got in found:
            if got is None:
                break
            batch.append(got)
        return batch

    async def next_bucket(self, log_path: str, at: Cursor, meta: LogMeta, since: int) -> bool:
        """Whether the reader at ``at`` (at the end of its bucket, having read every change
        up to ``since``) moves to the next bucket: the log moved past it and no change came
        in meanwhile. ``at`` is moved.

        Raises:
            Pruned: the bucket was pruned before the reader got to it.
        """
        if meta.bucket <= at.bucket:
            return False
        bucket_path = self.layout.bucket(log_path, at.bucket)
        if await self.calls.exists(self.layout.change(bucket_path, at.seq)) is not None:
            return True  # not at the end after all: read on
        if meta.trim > since and await self.calls.exists(bucket_path) is None:
            raise Pruned(meta.trim)
        at.bucket, at.seq = at.bucket + 1, 0
        return True

    async def read_range(self, log_path: str, since: int) -> list[tuple[int, bytes]]:
        """Every change of the log after ``since`` as ``(revision, data)``, read to its end.

        Raises:
            Pruned: changes after ``since`` were pruned.
        """
        at = await self.seek(log_path, since)
        changes: list[tuple[int, bytes]] = []
        while True:
            batch = await self.read_batch(log_path, at)
            changes += [(int(stat.created_zxid), data) for data, stat in batch]
            at.seq += len(batch)
            if len(batch) == READ_AHEAD:
                continue
            found = await self.read_meta(log_path)
            read_up_to = changes[-1][0] if changes else since
            if found is None or not await self.next_bucket(log_path, at, found[0], max(since, read_up_to)):
                return [c for c in changes if c[0] > since]
