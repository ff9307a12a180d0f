"""The ZooKeeper driver: every write one ``multi`` with its change record."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Collection, Sequence
from typing import Any

from aiozk import exc, protocol

from dfdb.drivers.base import (
    ABSENT,
    ANY,
    Capability,
    Digest,
    Driver,
    Entry,
    EventSource,
    Expect,
    Guard,
    KeyListing,
    Listing,
    PutRequest,
    RawAction,
)
from dfdb.drivers.zookeeper import digest as zk_digest
from dfdb.drivers.zookeeper.client import Calls
from dfdb.drivers.zookeeper.layout import (
    MULTI_OPS,
    Change,
    ChangeLogs,
    Layout,
    MalformedChange,
    Pruned,
    is_location,
    location,
    storable,
    topic_of,
)
from dfdb.drivers.zookeeper.leases import ZooKeeperLeases
from dfdb.drivers.zookeeper.parents import ShardParents
from dfdb.drivers.zookeeper.reads import NodeRead
from dfdb.drivers.zookeeper.source import LogAccess, ZooKeeperSource
from dfdb.errors import (
    AlreadyExistsError,
    BackendUnavailableError,
    ConflictError,
    CorruptObjectError,
    InvalidURL,
    LeaseLostError,
    NotFoundError,
    UnstorableKeyError,
    ValueTooLargeError,
)
from dfdb.tls import TLS_OPTIONS, TlsSettings
from dfdb.url import DatabaseURL, missing_credential

__all__ = ["ZooKeeperDriver"]

log = logging.getLogger(__name__)

_MULTI_BYTES = 512 * 1024  # well under jute.maxbuffer (1 MB)
_READ_FIRST = 100
"""Nodes in a listing's first ``multiRead``."""
_READ_BYTES = 512 * 1024
"""About the most data a listing reads in one ``multiRead`` (well under ``jute.maxbuffer``)."""
_READ_MOST = 2000
"""The most nodes a listing reads in one ``multiRead``."""
_READS_IN_FLIGHT = 4
"""A listing's ``multiRead`` requests of data nodes in flight at once."""
_CHILDREN_BATCH = 500
"""Shard nodes whose children a listing reads in one ``multiRead``."""
_CHUNKS_IN_FLIGHT = 4


class _Retry(Exception):
    """The log moved to another bucket (or a parent was missing): write again."""


class ZooKeeperDriver(ZooKeeperLeases, Driver):
    """The ZooKeeper driver; see the package documentation."""

    capabilities = Capability.NATIVE_STREAM | Capability.CHANGE_LOG | Capability.TOPIC_FILTER | Capability.LEASES
    requires_asyncio = True
    max_value_size = 500_000
    """A create or update sends the value twice in one request (the data node and its change
    record, in the same ``multi``), and ZooKeeper refuses a request over ``jute.maxbuffer``
    (1 MiB - 1 byte by default): twice this leaves room for the paths and the other
    operations. The change log needs the value itself (a change must be readable after the
    data node moved on), so it cannot be stored once."""

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(url)
        known = {"session_timeout", "timeout", "bucket_size", "keep", "idle", "window"} | TLS_OPTIONS
        unknown = set(url.options) - known
        if unknown:
            raise InvalidURL(f"unknown zk:// option(s): {', '.join(sorted(unknown))}")
        missing = missing_credential(url)
        if missing is not None:
            raise InvalidURL(missing)
        self.root = "/" + (url.path.strip("/") or "dfdb")
        self.session_timeout = url.float_option("session_timeout", 10.0, minimum=1)
        self.timeout = url.float_option("timeout", 10.0, minimum=0.1)
        self.bucket_size = url.int_option("bucket_size", 10_000, minimum=2)
        self.keep = url.int_option("keep", 10, minimum=1)
        self.idle = url.float_option("idle", 5.0, minimum=0.05)
        self.window = url.int_option("window", 64, minimum=1)
        self.servers = ",".join(f"{host or '127.0.0.1'}:{port or 2181}" for host, port in url.hosts) or "127.0.0.1:2181"
        auth = None if url.username is None else f"{url.username}:{url.password}".encode()
        self._layout = Layout(self.root)
        self._calls = Calls(url, self.servers, self.session_timeout, self.timeout, auth, self._layout.identity)
        tls = TlsSettings.from_url(url)
        if tls is not None:
            self._calls.tls = (tls.ssl_context(), tls.server_name)
        self._logs = ChangeLogs(self._calls, self._layout, self.bucket_size, self.keep)
        self._parents = ShardParents(self._calls)
        self._access = LogAccess(self._logs, self.idle, self.reap_due)

    @property
    def session_id(self) -> int | None:
        """The ZooKeeper session in use (``None`` while none is established)."""
        return self._calls.session_id

    # ------------------------------------------------------------ connection
    async def open(self) -> None:
        await super().open()
        await self._calls.open()

    async def _release(self) -> None:
        await self._calls.close()

    async def identity(self) -> str:
        self._check_open()
        return await self._calls.identity()

    async def current_revision(self) -> int:
        """The zxid of the last transaction the server has applied."""
        self._check_open()
        return await self._calls.current_revision()

    # ------------------------------------------------------------ contract
    async def get(self, table: str, id: str) -> Entry | None:
        self._check_open()
        if not storable(id):  # no such node can exist
            return None
        calls, layout = self._calls, self._layout
        index = await calls.get(layout.index(table, id))
        if index is None:
            return None
        loc = index[0].decode(errors="replace")
        if not is_location(loc):
            raise CorruptObjectError(table, id, "not a dfdb index node")
        data = await calls.get(layout.data(table, loc, id))
        if data is None:
            return None
        return Entry(table, id, topic_of(loc), data[0], int(data[1].last_modified_zxid))

    async def _write(
        self, table: str, id: str, loc: str, body: builtins.list[Any], action: RawAction, value: bytes, zxid_at: int,
        extra: Sequence[Any] = (), *, expired: bool = False, guard: Guard | None = None,
    ) -> int:  # fmt: skip
        """Append the change to its log in the same multi as ``body`` (and the lease checks
        and binding ``extra``); returns the zxid."""
        log_path = self._layout.log(table, loc)
        meta, version = await self._logs.state(log_path)
        ops = [
            protocol.CheckVersionRequest(path=log_path, version=version),
            *body,
            self._logs.append(log_path, meta, Change(action, id, value, expired)),
            *extra,
        ]
        appended = len(body) + 1
        replies = await self._calls.multi(ops, None if guard is None else guard.check_held)
        failed = [
            (i, r)
            for i, r in enumerate(replies)
            if isinstance(r, Exception) and not isinstance(r, exc.RolledBack | exc.RuntimeInconsistency)
        ]
        if failed:
            i, error = failed[0]
            if i > appended:
                raise LeaseLostError(f"{table}/{id} was not written: its lease or lock is no longer held")
            if i == 0 or i == appended:  # the log moved (or is gone): read it again
                self._logs.forget(log_path)
                raise _Retry()
            raise error
        await self._logs.after_append(log_path, replies[appended].path)
        return int(replies[zxid_at].stat.last_modified_zxid)

    def _check_size(self, table: str, id: str, value: bytes, topic: str | None = None) -> None:
        """Raises:
        ValueTooLargeError: ``value`` is over :attr:`max_value_size`.
        UnstorableKeyError: ``id`` or ``topic`` holds a character ZooKeeper refuses in a name."""
        if not storable(id):
            raise UnstorableKeyError(table, id, "id", "zk://")
        if topic is not None and not storable(topic):
            raise UnstorableKeyError(table, topic, "topic", "zk://")
        if len(value) > self.max_value_size:
            raise ValueTooLargeError(table, id, len(value), self.max_value_size, "zk://")

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        return await self.put_bound(table, id, topic, value, expect, None, None)

    async def put_bound(
        self, table: str, id: str, topic: str | None, value: bytes, expect: Expect,
        lease: str | None, guard: Guard | None,
    ) -> int:  # fmt: skip
        self._check_open()
        self._check_size(table, id, value, topic)
        calls, layout = self._calls, self._layout
        loc = location(topic)
        index, data = layout.index(table, id), layout.data(table, loc, id)
        for _ in range(50):
            try:
                extra = [] if lease is None and guard is None else await self.lease_ops(table, id, lease, guard)
                current = None if expect is ABSENT else await self._current(table, id, loc, topic, expect)
                if current is None:
                    if expect is not ABSENT and expect is not ANY:
                        raise NotFoundError(f"{table}/{id} not found")
                    shards = (index.rsplit("/", 1)[0], data.rsplit("/", 1)[0])
                    parents = await self._parents.missing(shards)  # made in the same multi
                    body = [*(calls.create(p, b"") for p in parents), calls.create(index, loc.encode()),
                            calls.set(index, loc.encode(), -1), calls.create(data, value)]  # fmt: skip
                    try:
                        revision = await self._write(
                            table, id, loc, body, "create", value, len(parents) + 2, extra, guard=guard
                        )
                    except exc.NodeExists:
                        if parents:  # a shard another writer made meanwhile, or the key itself: again
                            self._parents.exist(parents)
                            continue
                        if expect is ABSENT and not await self._mend_broken_index(table, id):
                            raise AlreadyExistsError(f"{table}/{id} already exists") from None
                        continue  # created meanwhile: update it (ANY); or a broken index mended
                    except exc.NoNode:
                        self._parents.forget(shards)
                        await calls.ensure(shards[0], gone=True)
                        await calls.ensure(shards[1], gone=True)
                        continue
                    self._parents.exist(parents)
                    return revision
                revision, version = current
                if expect is not ANY and revision != expect:
                    raise ConflictError(f"{table}/{id} is at revision {revision}, not {expect}")
                try:
                    body = [calls.set(data, value, version)]
                    return await self._write(table, id, loc, body, "update", value, 1, extra, guard=guard)
                except (exc.BadVersion, exc.NoNode):
                    if expect is ANY:
                        continue
                    now = await self._current(table, id, loc, topic, expect)
                    if now is None:
                        raise NotFoundError(f"{table}/{id} not found") from None
                    raise ConflictError(f"{table}/{id} is at revision {now[0]}, not {expect}") from None
            except _Retry:
                log.debug("%s/%s: its change log moved on meanwhile; writing again", table, id)
                continue
        raise BackendUnavailableError(f"{self.url}: {table}/{id}: the write kept meeting concurrent changes")

    async def _current(
        self, table: str, id: str, loc: str, topic: str | None, expect: Expect
    ) -> tuple[int, int] | None:
        """(revision, data version) of the key under ``loc``; ``None`` when absent.

        Raises:
            ConflictError: the key exists under another topic, not at revision ``expect``
                (an object that was deleted and created again elsewhere).
            ValueError: the key exists under another topic.
        """
        calls, layout = self._calls, self._layout
        index, data = await asyncio.gather(calls.get(layout.index(table, id)), calls.get(layout.data(table, loc, id)))
        if index is None:
            return None
        stored = index[0].decode(errors="replace")
        if not is_location(stored) or (stored == loc and data is None):
            await self._mend_index(table, id, int(index[1].version))
            raise _Retry()
        if stored != loc:
            elsewhere = await calls.get(layout.data(table, stored, id)) if is_location(stored) else None
            revision = None if elsewhere is None else int(elsewhere[1].last_modified_zxid)
            if expect is not ANY and revision != expect:
                raise ConflictError(f"{table}/{id} is at revision {revision}, not {expect}")
            raise ValueError(f"{table}/{id} belongs to topic {topic_of(stored)!r}, not {topic!r}")
        assert data is not None
        return int(data[1].last_modified_zxid), int(data[1].version)

    async def _mend_broken_index(self, table: str, id: str) -> bool:
        """Mend the index node of (table, id) if it is not dfdb's or names no data node; whether it was."""
        calls, layout = self._calls, self._layout
        index = await calls.get(layout.index(table, id))
        loc = None if index is None else index[0].decode(errors="replace")
        if index is None or (is_location(loc or "") and await calls.exists(layout.data(table, loc or "", id))):
            return False
        await self._mend_index(table, id, int(index[1].version))
        return True

    async def _mend_index(self, table: str, id: str, version: int) -> None:
        """Point an index node that is not dfdb's, or that names no data node, at the data
        node a search of the table's topics finds, or delete it when there is none (checked
        against its ``version``: the caller reads again either way)."""
        calls, layout = self._calls, self._layout
        index = layout.index(table, id)
        found = [
            loc
            for loc in await self._logs.locations(table)
            if await calls.exists(layout.data(table, loc, id)) is not None
        ]
        log.warning("%s/%s: its index node %s names no data node; %s", table, id, index, found or "deleting it")
        request = calls.set(index, found[0].encode(), version) if found else calls.delete(index, version)
        with contextlib.suppress(exc.BadVersion, exc.NoNode):
            await calls.send(request)

    async def put_many(self, writes: Sequence[PutRequest]) -> builtins.list[int | Exception]:
        """Creates go in chunked multis (each under half of ZooKeeper's 1 MB buffer); a chunk
        that fails, and every other write, is written one by one, ``window`` at a time."""
        self._check_open()
        results: builtins.list[int | Exception | None] = [None] * len(writes)
        for i, w in enumerate(writes):
            try:
                self._check_size(w.table, w.id, w.value, w.topic)
            except (ValueTooLargeError, UnstorableKeyError) as error:
                results[i] = error
        creates = [i for i, w in enumerate(writes) if w.expect is ABSENT and results[i] is None]
        chunks: builtins.list[builtins.list[int]] = [[]]
        size = 0
        for i in creates:
            cost = 2 * len(writes[i].value) + 200  # the value is in the data node and in the change
            if chunks[-1] and (size + cost > _MULTI_BYTES or len(chunks[-1]) * 5 >= MULTI_OPS):
                chunks.append([])
                size = 0
            chunks[-1].append(i)
            size += cost
        queue = iter(c for c in chunks if c)

        async def chunk_worker() -> None:
            for chunk in queue:
                outcome = await self._create_chunk([writes[j] for j in chunk])
                if outcome is not None:
                    for j, revision in zip(chunk, outcome, strict=True):
                        results[j] = revision

        await asyncio.gather(*(chunk_worker() for _ in range(_CHUNKS_IN_FLIGHT)))
        done: builtins.list[int | Exception] = [r if r is not None else 0 for r in results]
        await self._put_windowed(writes, [i for i, r in enumerate(results) if r is None], self.window, done)
        return done

    async def _create_chunk(self, writes: builtins.list[PutRequest], attempts: int = 5) -> builtins.list[int] | None:
        """Create ``writes`` in one multi; ``None`` when it failed (write them one by one)."""
        calls, layout = self._calls, self._layout
        ops: builtins.list[Any] = []
        states: dict[str, Any] = {}
        shards: builtins.list[str] = []
        for w in writes:
            loc = location(w.topic)
            log_path = layout.log(w.table, loc)
            if log_path not in states:
                states[log_path] = await self._logs.state(log_path)
                ops.append(protocol.CheckVersionRequest(path=log_path, version=states[log_path][1]))
            shards += (layout.index(w.table, w.id).rsplit("/", 1)[0], layout.data(w.table, loc, w.id).rsplit("/", 1)[0])
        parents = await self._parents.missing(shards)  # made first, all at once (chunks in flight share them)
        if parents:
            await asyncio.gather(*(calls.ensure(p) for p in parents))
            self._parents.exist(parents)
        zxid_at = -1
        entries: builtins.list[tuple[str, int]] = []
        for w in writes:
            loc = location(w.topic)
            log_path = layout.log(w.table, loc)
            index = layout.index(w.table, w.id)
            ops += [
                calls.create(index, loc.encode()),
                calls.set(index, loc.encode(), -1),
                calls.create(layout.data(w.table, loc, w.id), w.value),
            ]
            zxid_at = len(ops) - 2
            ops.append(self._logs.append(log_path, states[log_path][0], Change("create", w.id, w.value)))
            entries.append((log_path, len(ops) - 1))
        replies = await calls.multi(ops)
        ignored = (exc.RolledBack, exc.RuntimeInconsistency)
        failed = [r for r in replies if isinstance(r, Exception) and not isinstance(r, ignored)]
        if failed:
            for log_path in states:
                self._logs.forget(log_path)
            if any(isinstance(r, exc.NoNode) for r in failed):
                self._parents.forget(shards)  # a shard removed meanwhile: read the scopes again
            if attempts > 0 and all(isinstance(r, exc.BadVersion | exc.NoNode) for r in failed):
                return await self._create_chunk(writes, attempts - 1)  # a log moved on: again
            return None
        revision = int(replies[zxid_at].stat.last_modified_zxid)
        for log_path, at in entries:
            await self._logs.after_append(log_path, replies[at].path)
        return [revision] * len(writes)

    async def delete(self, table: str, id: str, expect: int | None = None) -> Entry:
        return await self._delete(table, id, expect)

    async def delete_guarded(self, table: str, id: str, guard: Guard) -> Entry:
        return await self._delete(table, id, None, guard=guard)

    async def _delete(
        self, table: str, id: str, expect: int | None, expired: bool = False, guard: Guard | None = None
    ) -> Entry:
        """``delete``; ``expired``: logged as a lease's expiry; ``guard``: checked in its multi."""
        self._check_open()
        if not storable(id):  # no such node can exist
            raise NotFoundError(f"{table}/{id} not found")
        calls, layout = self._calls, self._layout
        index_path = layout.index(table, id)
        for _ in range(50):
            index = await calls.get(index_path)
            if index is None:
                raise NotFoundError(f"{table}/{id} not found")
            loc = index[0].decode(errors="replace")
            data_path = layout.data(table, loc, id)
            data = await calls.get(data_path) if is_location(loc) else None
            if data is None:
                await self._mend_index(table, id, int(index[1].version))
                continue
            revision = int(data[1].last_modified_zxid)
            if expect is not None and revision != expect:
                raise ConflictError(f"{table}/{id} is at revision {revision}, not {expect}")
            body = [
                calls.set(index_path, loc.encode(), int(index[1].version)),
                calls.delete(index_path, int(index[1].version) + 1),
                calls.delete(data_path, int(data[1].version)),
            ]
            extra = [] if guard is None else await self.lease_ops(table, id, None, guard)
            try:
                zxid = await self._write(
                    table, id, loc, body, "delete", data[0], 1, extra, expired=expired, guard=guard
                )
            except (_Retry, exc.BadVersion, exc.NoNode):
                continue
            return Entry(table, id, topic_of(loc), data[0], zxid)
        raise ConflictError(f"{table}/{id} keeps changing; delete gave up")

    async def list(self, table: str, topic: str | None = None) -> Listing:
        """The data nodes of the scope, brought to one revision: nodes are read one by one,
        so the changes logged while reading are applied on top (read from the logs)."""
        self._check_open()
        calls, layout = self._calls, self._layout
        for _ in range(10):
            before = await calls.current_revision()
            if topic is not None and not storable(topic):  # no such node can exist
                return Listing([], before, calls.known_identity)
            locs = [location(topic)] if topic is not None else await self._logs.locations(table)
            entries: dict[str, Entry] = {}
            for loc in locs:
                base = layout.data_scope(table, loc)
                shards = await calls.children(base)
                per_shard = await self._children_of([f"{base}/{shard}" for shard in shards])
                paths = [f"{base}/{shard}/{id}" for shard, ids in zip(shards, per_shard, strict=True) for id in ids]
                loc_topic = topic_of(loc)
                for path, got in zip(paths, await self._read_nodes(paths), strict=True):
                    if got is not None:
                        id = path.rsplit("/", 1)[1]
                        entries[id] = Entry(table, id, loc_topic, got[0], got[1])
            after = await calls.current_revision()
            if after > before and not await self._apply_changes(entries, table, topic, before, after):
                log.debug("listing %s again: a change log could not be read from %d", table, before)
                continue
            return Listing(builtins.list(entries.values()), after, calls.known_identity)
        raise BackendUnavailableError(f"{self.url}: {table}: the listing kept meeting pruned or unreadable logs")

    async def _children_of(self, parents: builtins.list[str]) -> builtins.list[builtins.list[str]]:
        """The children of each of ``parents`` (sorted; ``[]``: absent), by ``multiRead``
        :data:`_CHILDREN_BATCH` parents a request, one by one where the server has no ``multiRead``."""
        calls = self._calls
        chunks = [parents[i : i + _CHILDREN_BATCH] for i in range(0, len(parents), _CHILDREN_BATCH)]
        out: builtins.list[builtins.list[str]] = []
        for chunk, names in zip(chunks, await asyncio.gather(*(calls.children_many(c) for c in chunks)), strict=True):
            out += names if names is not None else await asyncio.gather(*(calls.children(p) for p in chunk))
        return out

    async def _read_nodes(self, paths: builtins.list[str]) -> builtins.list[NodeRead]:
        """The data and ``mzxid`` of each node of ``paths`` (``None``: absent), read by
        ``multiRead`` a batch at a time, :data:`_READS_IN_FLIGHT` batches at once: the first
        of :data:`_READ_FIRST` nodes, the next as many as fit in about :data:`_READ_BYTES`
        (at most :data:`_READ_MOST`); one by one where the server has no ``multiRead``."""
        calls = self._calls
        out: builtins.list[NodeRead] = []
        start, batch, size = 0, _READ_FIRST, 0
        while start < len(paths):
            chunks = []
            for _ in range(_READS_IN_FLIGHT):
                if start < len(paths):
                    chunks.append(paths[start : start + batch])
                    start += batch
            for chunk, nodes in zip(chunks, await asyncio.gather(*(calls.get_many(c) for c in chunks)), strict=True):
                if nodes is None:
                    got = await asyncio.gather(*(calls.get(p) for p in chunk))
                    nodes = [None if n is None else (n[0], int(n[1].last_modified_zxid)) for n in got]
                out += nodes
                size += sum(len(node[0]) for node in nodes if node is not None)
            batch = max(_READ_FIRST, min(_READ_MOST, _READ_BYTES * len(out) // (size or 1)))
        return out

    async def digest(self, table: str, topics: Collection[str | None] | None, buckets: int) -> Digest:
        """From the data nodes' stats (no value is read); see :mod:`~dfdb.drivers.zookeeper.digest`."""
        self._check_open()
        return await zk_digest.digest(self, table, topics, buckets)

    async def digest_keys(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
    ) -> KeyListing:
        self._check_open()
        return await zk_digest.digest_keys(self, table, topics, buckets, wanted)

    async def _apply_changes(self, entries: dict[str, Entry], table: str, topic: str | None, since: int,
                             until: int) -> bool:  # fmt: skip
        """Bring ``entries`` (read one by one between ``since`` and ``until``) to ``until`` with
        the logged changes; ``False`` when a log was pruned or a change is unreadable."""
        locs = [location(topic)] if topic is not None else await self._logs.locations(table)
        changes: builtins.list[tuple[int, str | None, Change]] = []
        for loc in locs:
            try:
                found = await self._logs.read_range(self._layout.log(table, loc), since)
                changes += [(rev, topic_of(loc), Change.decode(data)) for rev, data in found if rev <= until]
            except (Pruned, MalformedChange):
                return False
        for revision, change_topic, change in sorted(changes, key=lambda c: c[0]):
            held = entries.get(change.id)
            if held is not None and held.revision >= revision:
                continue
            if change.action == "delete":
                entries.pop(change.id, None)
            else:
                entries[change.id] = Entry(table, change.id, change_topic, change.value, revision)
        return True

    async def watch(
        self,
        tables: Collection[str],
        topics: Collection[str | None] | None = None,
        since: int | None = None,
    ) -> EventSource:
        self._check_open()
        if since is None:
            since = await self._calls.current_revision()
        source = ZooKeeperSource(self._access, sorted(set(tables)), topics, since)
        try:
            await source.start()
        except BaseException:
            await source.aclose()  # its watch callbacks go with it
            raise
        return self._track(source)

    async def tables(self) -> builtins.list[str]:
        """The tables with an index node: a table node under ``/P/i`` whose shards (which
        stay when emptied) have at least one child."""
        self._check_open()
        calls, base = self._calls, self._layout.path("i")
        names: builtins.list[str] = []
        for table in await calls.children(base):
            shards = await calls.children(f"{base}/{table}")
            stats = await asyncio.gather(*(calls.get(f"{base}/{table}/{shard}") for shard in shards))
            if any(got is not None and int(got[1].num_children) > 0 for got in stats):
                names.append(table)
        return names

    async def allocate_unique_key(self, table: str) -> int:
        """The new version of a counter node, set unconditionally: one round trip, no retries
        under contention (a node's version is a 32-bit counter: 2**31 keys per table)."""
        self._check_open()
        path = self._layout.key_counter(table)
        for _ in range(3):
            try:
                _, reply = await self._calls.send(self._calls.set(path, b"", -1))
                return int(reply.stat.version)
            except exc.NoNode:
                await self._calls.ensure(path, gone=True)
        raise BackendUnavailableError(f"{self.url}: cannot create the key counter {path}")

    async def compact(self) -> None:
        self._check_open()
        await self._logs.compact()
