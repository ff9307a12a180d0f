"""``etcd://host:port[,host:port…][/prefix]``: etcd v3 with revision-exact watches.

Layout under the prefix ``P`` (the URL path, default ``dfdb``)::

    P/d/t/TOPIC/TABLE/ID   the value of an object of topic TOPIC
    P/d/n/TABLE/ID         the value of a topic-less object
    P/i/TABLE/ID           the index: "t/TOPIC" or "n", a newline, the value
    P/k/TABLE              allocate_unique_key: its version counts the keys given
    P/identity             this dataset's identity (made once, kept with the data)

Every write is one transaction on the index key and the data key, so both carry
the same ``mod_revision``: the entry's revision is etcd's store revision, and each
revision changes one data key. The index key keeps ids unique across topics (a
create compares its version with 0), makes ``get`` one round trip and lists a whole
table; it holds a second copy of the value for that. A compare-and-swap compares
the ``mod_revision`` of both keys, so an expectation naming another topic fails too.

A watch follows data keys only, topic first: one prefix watch per topic (so etcd
itself filters topics, and every table of a topic shares one watch), or one watch
of ``P/d/`` for every topic; tables are filtered as events arrive. Each watch
resumes after any disconnect from the last revision it delivered, with
``prev_kv`` so that deletes carry the last value; a compacted start revision
yields ``resync``.

Options: ``timeout`` (seconds per call, default 3), ``keepalive`` (seconds between
gRPC keepalive pings on a watch, default 5; with ``keepalive_timeout``, default 2, a
hung member is noticed within about their sum), ``page`` (keys per listing page,
default 1000), ``window`` (writes in flight in ``put_many``, default 64),
``watch_hold`` (seconds a watch of several topics holds a change for the others to
catch up, default 1: see :class:`~dfdb.drivers.etcd_watch.EtcdSource`), and the TLS
options of :mod:`dfdb.tls` (``tls=true``, ``ca_file``, ``cert_file`` and ``key_file``
for client-certificate authentication, ``server_name``; gRPC always checks the
server's certificate, so ``verify=false`` is refused). A user name and password are
etcd's own users (``etcdctl auth enable``); with neither, a client certificate's
common name is the user.

Several endpoints make a cluster: calls go to one member and move to the next on a
connection failure or time-out; watches ask for a leader (``hasleader``), so a
member cut off from the cluster ends them and they move on. An idle watch learns
how far it is with etcd's progress notifications (server flag
``--experimental-watch-progress-notify-interval``, 10 minutes by default): set it
lower where compaction runs often, so that a reconnecting idle watch resumes above
the compacted revision.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import grpc
from aetcd import rpc

from dfdb.drivers import etcd_digest
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
)
from dfdb.drivers.etcd_calls import _Endpoints, unary
from dfdb.drivers.etcd_leases import EtcdLeases
from dfdb.drivers.etcd_repair import delete_unreadable, readable, replace_unreadable
from dfdb.drivers.etcd_watch import EtcdSource
from dfdb.drivers.etcd_watchers import _range_end
from dfdb.errors import (
    AlreadyExistsError,
    AuthenticationError,
    BackendUnavailableError,
    ConflictError,
    CorruptObjectError,
    DriverError,
    InvalidURL,
    NotFoundError,
)
from dfdb.retry import checkpoint_if_cancelled, run_to_completion
from dfdb.tls import TLS_OPTIONS, TlsSettings, grpc_tls_refusal, protocol_mismatch
from dfdb.url import DatabaseURL, missing_credential

__all__ = ["EtcdDriver", "EtcdSource"]

log = logging.getLogger(__name__)

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.ABORTED,
}
_EQUAL = rpc.Compare.EQUAL
_PAGE_BYTES = 16 * 1024 * 1024
"""About the most value bytes a listing asks for in one page (gRPC takes 64 MiB a reply)."""
_GREATER = rpc.Compare.GREATER


class EtcdDriver(EtcdLeases, Driver):
    """The etcd driver; see the module documentation."""

    capabilities = Capability.NATIVE_STREAM | Capability.CHANGE_LOG | Capability.TOPIC_FILTER | Capability.LEASES
    max_value_size = 750 * 1024  # a request carries the value twice (data and index key); etcd takes 1.5 MiB
    requires_asyncio = True

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(url)
        known = {"timeout", "keepalive", "keepalive_timeout", "page", "window", "watch_hold"} | TLS_OPTIONS
        unknown = set(url.options) - known
        if unknown:
            raise InvalidURL(f"unknown etcd:// option(s): {', '.join(sorted(unknown))}")
        missing = missing_credential(url)
        if missing is not None:
            raise InvalidURL(missing)
        self.prefix = url.path.strip("/") or "dfdb"
        self.timeout = url.float_option("timeout", 3.0, minimum=0.01)
        keepalive = url.float_option("keepalive", 5.0, minimum=0.1)
        keepalive_timeout = url.float_option("keepalive_timeout", 2.0, minimum=0.1)
        self.page = url.int_option("page", 1000, minimum=1)
        self.window = url.int_option("window", 64, minimum=1)
        self.watch_hold = url.float_option("watch_hold", 1.0, positive=True)
        self.targets = [
            f"[{host}]:{port or 2379}" if ":" in host else f"{host or '127.0.0.1'}:{port or 2379}"
            for host, port in (url.hosts or (("127.0.0.1", None),))
        ]
        self.channel_options: builtins.list[tuple[str, int | str]] = [
            ("grpc.keepalive_time_ms", int(keepalive * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.http2.ping_timeout_ms", int(keepalive_timeout * 1000)),  # grpcio 1.6x+ waits on this one
            ("grpc.keepalive_permit_without_calls", 0),  # etcd answers idle pings with GOAWAY
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # its own TCP connection, as a Redis or ZooKeeper client has: without it gRPC
            # shares one connection between the channels a process opens to one address
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self.credentials = self._channel_credentials(TlsSettings.from_url(url))
        self._conn = _Endpoints(self)
        self._identity: str | None = None
        self._sources_started = 0

    def _channel_credentials(self, tls: TlsSettings | None) -> grpc.ChannelCredentials | None:
        """gRPC channel credentials for ``tls`` (and the server name it checks)."""
        if tls is None:
            return None
        if not tls.verify:
            raise InvalidURL("etcd:// cannot skip the server's certificate check (verify=false): give its ca_file")
        if tls.server_name is not None:
            self.channel_options.append(("grpc.ssl_target_name_override", tls.server_name))
        return grpc.ssl_channel_credentials(
            root_certificates=tls.read("ca_file") if tls.ca_file else None,
            private_key=tls.read("key_file") if tls.key_file else None,
            certificate_chain=tls.read("cert_file") if tls.cert_file else None,
        )

    # ------------------------------------------------------------ keys
    def _key(self, *parts: str) -> bytes:
        return "/".join((self.prefix, *parts)).encode()

    def _index_key(self, table: str, id: str) -> bytes:
        return self._key("i", table, id)

    @staticmethod
    def _location(topic: str | None) -> str:
        return "n" if topic is None else f"t/{topic}"

    def _data_key(self, table: str, topic: str | None, id: str) -> bytes:
        return self._key("d", self._location(topic), table, id)

    def _topic_prefix(self, topic: str | None) -> bytes:
        """The prefix of the data keys of one topic (every table)."""
        return self._key("d", self._location(topic)) + b"/"

    def _parse_data_key(self, key: bytes) -> tuple[str, str | None, str] | None:
        """(table, topic, id) of a data key, ``None`` for a key dfdb did not write."""
        rest = self._relative(key)
        if rest is not None and len(rest) == 4 and rest[:2] == ["d", "n"]:
            return rest[2], None, rest[3]
        if rest is not None and len(rest) == 5 and rest[:2] == ["d", "t"]:
            return rest[3], rest[2], rest[4]
        return None

    def _relative(self, key: bytes) -> builtins.list[str] | None:
        """The parts of ``key`` after the prefix, ``None`` when it is not under it."""
        try:
            parts = key.decode().split("/")
        except UnicodeDecodeError:
            return None
        head = self.prefix.split("/")
        return parts[len(head) :] if parts[: len(head)] == head else None

    # ------------------------------------------------------------ calls
    async def _call(self, method: str, request: Any, stub: str = "kv") -> Any:
        """One unary call (of the KV service, or ``stub``) with a time-out, moving to the next member on failure."""
        self._check_open()
        conn = self._conn
        channel = None
        try:
            channel = await conn.connect()
            return await unary(
                getattr(getattr(conn, stub), method)(request, timeout=self.timeout, metadata=conn.metadata())
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # another caller closed the channel under this call (a failover)
            raise BackendUnavailableError(f"{self.url} ({conn.target}): the connection was replaced") from None
        except grpc.aio.AioRpcError as exc:
            await checkpoint_if_cancelled()  # a deadline's own cancellation, with its message
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED and conn.metadata():
                await conn.close()  # the token expired: authenticate again on the next call
            if code == grpc.StatusCode.PERMISSION_DENIED:
                raise AuthenticationError(f"{self.url}: not allowed: {exc.details()} (check the user's role)") from None
            refused = grpc_tls_refusal(exc.details()) if code == grpc.StatusCode.UNAVAILABLE else None
            if refused is not None:
                await conn.close()
                raise AuthenticationError(f"{self.url} ({conn.target}): TLS: {refused}") from None
            if code in _RETRYABLE or code == grpc.StatusCode.UNAUTHENTICATED:
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    await conn.failover(channel)
                raise BackendUnavailableError(f"{self.url} ({conn.target}): {code.name}: {exc.details()}") from None
            raise DriverError(f"{self.url}: {code.name}: {exc.details()}") from None

    async def _txn(self, compare: builtins.list[Any], success: builtins.list[Any], failure: builtins.list[Any]) -> Any:
        return await self._call("Txn", rpc.TxnRequest(compare=compare, success=success, failure=failure))

    async def _range(self, key: bytes, end: bytes | None = None, **fields: Any) -> Any:
        request = rpc.RangeRequest(key=key, **fields)
        if end is not None:
            request.range_end = end
        return await self._call("Range", request)

    # ------------------------------------------------------------ connection
    async def open(self) -> None:
        await super().open()
        try:
            await self.identity()
        except BackendUnavailableError:
            await self._conn.close()
            hosts = [(h or "127.0.0.1", p or 2379) for h, p in self.url.hosts or (("127.0.0.1", None),)]
            request = b"GET /version HTTP/1.0\r\n\r\n"  # etcd's plain port answers HTTP/1 too
            tls = self.credentials is not None
            reason = await protocol_mismatch(hosts, tls=tls, request=request, answers=(b"HTTP/",))
            if reason is not None:
                raise AuthenticationError(f"{self.url}: {reason}") from None
            raise
        except BaseException:
            await self._conn.close()
            raise

    async def _release(self) -> None:
        await self._conn.close()

    async def identity(self) -> str:
        key = self._key("identity")
        found = await self._range(key)  # read first: a user whose role only reads may open a dataset
        if found.kvs:
            self._identity = bytes(found.kvs[0].value).decode()
            return self._identity
        fresh = f"etcd-{uuid.uuid4().hex[:16]}".encode()
        reply = await self._txn(
            [rpc.Compare(key=key, target=rpc.Compare.VERSION, result=_EQUAL, version=0)],
            [rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=fresh))],
            [rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        if reply.succeeded:
            self._identity = fresh.decode()
        else:
            self._identity = reply.responses[0].response_range.kvs[0].value.decode()
        return self._identity

    async def current_revision(self) -> int:
        """The store revision now."""
        reply = await self._range(self._key("identity"), count_only=True)
        return int(reply.header.revision)

    # ------------------------------------------------------------ contract
    def _index_entry(self, table: str, id: str, kv: Any) -> Entry:
        if not readable(kv):
            raise CorruptObjectError(table, id, "not a dfdb index entry")
        location, _, value = bytes(kv.value).partition(b"\n")
        loc = location.decode(errors="replace")
        return Entry(table, id, None if loc == "n" else loc[2:], value, int(kv.mod_revision))

    async def get(self, table: str, id: str) -> Entry | None:
        reply = await self._range(self._index_key(table, id))
        if not reply.kvs:
            return None
        return self._index_entry(table, id, reply.kvs[0])

    def _put_ops(self, table: str, id: str, topic: str | None, value: bytes, lease: int = 0) -> builtins.list[Any]:
        index = self._location(topic).encode() + b"\n" + value
        return [
            rpc.RequestOp(request_put=rpc.PutRequest(key=self._index_key(table, id), value=index, lease=lease)),
            rpc.RequestOp(request_put=rpc.PutRequest(key=self._data_key(table, topic, id), value=value, lease=lease)),
        ] + ([self._mark_op(topic, lease)] if lease else [])

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect,
                  lease: str | None = None, guard: Guard | None = None) -> int:  # fmt: skip
        index, data = self._index_key(table, id), self._data_key(table, topic, id)
        puts = self._put_ops(table, id, topic, value, int(lease or 0))
        read_index = [rpc.RequestOp(request_range=rpc.RangeRequest(key=index))]
        absent = rpc.Compare(key=index, target=rpc.Compare.VERSION, result=_EQUAL, version=0)
        if expect is ABSENT:
            reply = await self._guarded_txn(lease, guard, [absent], puts, read_index)
        elif expect is ANY:  # create, or update when it exists under this topic
            exists_here = rpc.Compare(key=data, target=rpc.Compare.VERSION, result=_GREATER, version=0)
            inner = rpc.TxnRequest(compare=[exists_here], success=puts, failure=read_index)
            reply = await self._guarded_txn(lease, guard, [absent], puts, [rpc.RequestOp(request_txn=inner)])
        else:
            # the index is the authority; the data key must exist under this topic (a topic
            # is fixed), at whatever revision another tool may have left it
            same = [
                rpc.Compare(key=index, target=rpc.Compare.MOD, result=_EQUAL, mod_revision=expect),
                rpc.Compare(key=data, target=rpc.Compare.VERSION, result=_GREATER, version=0),
            ]
            reply = await self._guarded_txn(lease, guard, same, puts, read_index)
        if reply.succeeded:
            return int(reply.header.revision)
        response = reply.responses[0]
        if response.WhichOneof("response") == "response_txn":
            if response.response_txn.succeeded:
                return int(reply.header.revision)
            response = response.response_txn.responses[0]
        kvs = response.response_range.kvs
        if not kvs:
            raise NotFoundError(f"{table}/{id} not found")
        if expect is ANY and not readable(kvs[0]):
            return await replace_unreadable(self, table, id, topic, puts, kvs[0])
        current = self._index_entry(table, id, kvs[0])
        if expect is ABSENT:
            raise AlreadyExistsError(f"{table}/{id} already exists")
        if expect is not ANY and current.revision != expect:
            raise ConflictError(f"{table}/{id} is at revision {current.revision}, not {expect}")
        raise ValueError(f"{table}/{id} belongs to topic {current.topic!r}, not {topic!r}")

    put_bound = put

    async def put_many(self, writes: Sequence[PutRequest]) -> builtins.list[int | Exception]:
        """Writes in flight ``window`` at a time, one transaction each: every write keeps
        its own outcome and its own revision."""
        results: builtins.list[int | Exception] = [0] * len(writes)
        await self._put_windowed(writes, range(len(writes)), self.window, results)
        return results

    async def delete(self, table: str, id: str, expect: int | None = None) -> Entry:
        index = self._index_key(table, id)
        for _ in range(100):
            try:
                current = await self.get(table, id)
            except CorruptObjectError:
                if expect is not None:
                    raise
                gone = await delete_unreadable(self, table, id)
                if gone is None:
                    continue
                return gone
            if current is None:
                raise NotFoundError(f"{table}/{id} not found")
            if expect is not None and current.revision != expect:
                raise ConflictError(f"{table}/{id} is at revision {current.revision}, not {expect}")
            reply = await self._txn(
                [rpc.Compare(key=index, target=rpc.Compare.MOD, result=_EQUAL, mod_revision=current.revision)],
                [
                    rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=index)),
                    rpc.RequestOp(
                        request_delete_range=rpc.DeleteRangeRequest(key=self._data_key(table, current.topic, id))
                    ),
                ],
                [],
            )
            if reply.succeeded:
                return Entry(table, id, current.topic, current.value, int(reply.header.revision))
        raise ConflictError(f"{table}/{id} keeps changing; delete gave up")

    async def list(self, table: str, topic: str | None = None) -> Listing:
        """A whole table from its index keys, one topic from its data keys; every page read
        at the first page's revision.

        The first page holds ``page`` keys and each next one twice as many, up to about
        :data:`_PAGE_BYTES` of values: etcd reads every key left in the range to answer a
        page (it counts them), whatever its limit: a listing of many small pages costs the server the
        square of its length."""
        prefix = self._key("i", table) + b"/" if topic is None else self._key("d", f"t/{topic}", table) + b"/"
        end = _range_end(prefix)
        for _ in range(5):
            entries: builtins.list[Entry] = []
            key, revision, limit, size, count = prefix, 0, self.page, 0, 0
            try:
                while True:
                    reply = await self._range(key, end, limit=limit, revision=revision)
                    revision = revision or int(reply.header.revision)
                    kvs = reply.kvs
                    size += self._add_listed(entries, table, topic, kvs)
                    count += len(kvs)
                    if not reply.more or not kvs:
                        return Listing(entries, revision, self._identity)
                    key = bytes(kvs[-1].key) + b"\x00"
                    limit = max(self.page, min(2 * limit, _PAGE_BYTES * count // (size or 1)))
            except DriverError as exc:
                if "compacted" not in str(exc):
                    raise
                # compacted between two pages: list again at a newer revision
        raise BackendUnavailableError(f"{self.url}: the listing kept being compacted")

    async def digest(self, table: str, topics: Collection[str | None] | None, buckets: int) -> Digest:
        """From keys-only range reads of the scope (no value is read); see :mod:`~dfdb.drivers.etcd_digest`."""
        return await etcd_digest.digest(self, table, topics, buckets)

    async def digest_keys(
        self, table: str, topics: Collection[str | None] | None, buckets: int, wanted: Collection[int]
    ) -> KeyListing:
        return await etcd_digest.digest_keys(self, table, topics, buckets, wanted)

    async def digest_many(
        self, buckets: Mapping[str, int], topics: Collection[str | None] | None
    ) -> builtins.dict[str, Digest]:
        return await etcd_digest.digest_many(self, buckets, topics)

    async def digest_keys_many(
        self, scopes: Mapping[str, Collection[str | None] | None]
    ) -> builtins.dict[str, KeyListing]:
        return await etcd_digest.digest_keys_many(self, scopes)

    def _add_listed(self, entries: builtins.list[Entry], table: str, topic: str | None, kvs: Any) -> int:
        """Append the entries of a listing's page to ``entries`` (as :meth:`_listed` reads
        each, in one loop); returns the bytes of their values."""
        size = 0
        add = entries.append
        for kv in kvs:
            stored = kv.value
            size += len(stored)
            location, sep, value = stored.partition(b"\n")
            if topic is None and (not sep or (location != b"n" and not location.startswith(b"t/"))):
                entry = self._listed(table, topic, kv)  # not an index entry: reported
                if entry is not None:
                    add(entry)
                continue
            id = kv.key.rsplit(b"/", 1)[-1].decode(errors="replace")
            if topic is not None:
                add(Entry(table, id, topic, stored, kv.mod_revision))
            else:
                loc = location.decode(errors="replace")
                add(Entry(table, id, None if loc == "n" else loc[2:], value, kv.mod_revision))
        return size

    def _listed(self, table: str, topic: str | None, kv: Any) -> Entry | None:
        id = bytes(kv.key).rsplit(b"/", 1)[-1].decode(errors="replace")
        if topic is not None:
            return Entry(table, id, topic, bytes(kv.value), int(kv.mod_revision))
        try:
            return self._index_entry(table, id, kv)
        except CorruptObjectError as exc:
            log.warning("skipping %s", str(exc))
            return None

    async def watch(
        self,
        tables: Collection[str],
        topics: Collection[str | None] | None = None,
        since: int | None = None,
    ) -> EventSource:
        self._check_open()
        if since is None:
            since = await self.current_revision()
        source = EtcdSource(_WatchAccess(self), sorted(set(tables)), topics, since)
        try:
            await source.start()
        except BaseException:
            await run_to_completion(source.aclose)  # a cancelled open closes its stream all the same
            raise
        return self._track(source)

    async def tables(self) -> builtins.list[str]:
        """The tables under ``P/i/``: one keys-only read per table, each skipping past the
        table's index keys."""
        head = self._key("i") + b"/"
        end = _range_end(head)
        names: builtins.list[str] = []
        key = head
        while True:
            reply = await self._range(key, end, limit=1, keys_only=True)
            if not reply.kvs:
                return names
            table = bytes(reply.kvs[0].key)[len(head) :].split(b"/", 1)[0]
            names.append(table.decode(errors="replace"))
            key = head + table + b"0"  # the first key after every "P/i/TABLE/…"

    async def allocate_unique_key(self, table: str) -> int:
        """The new version of a counter key, written and read in one transaction: one round
        trip, no retries under contention (etcd serialises the writes)."""
        key = self._key("k", table)
        reply = await self._txn(
            [],
            [
                rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"")),
                rpc.RequestOp(request_range=rpc.RangeRequest(key=key)),
            ],
            [],
        )
        return int(reply.responses[1].response_range.kvs[0].version)

    async def compact(self) -> None:
        revision = await self.current_revision()
        try:
            await self._call("Compact", rpc.CompactionRequest(revision=revision, physical=True))
        except DriverError as exc:
            if "compacted" not in str(exc):  # already compacted at that revision
                raise


class _WatchAccess:
    """What an :class:`EtcdSource` may use of its driver: the key layout, its own
    connections (starting at the next member, so that watches spread over a cluster),
    the dataset's identity and the store revision."""

    def __init__(self, driver: EtcdDriver) -> None:
        self._driver = driver
        self.url = driver.url
        self.timeout = driver.timeout
        self.hold = driver.watch_hold

    def every_topic(self) -> bytes:
        """The prefix of every data key."""
        return self._driver._key("d") + b"/"

    def topic_prefix(self, topic: str | None) -> bytes:
        return self._driver._topic_prefix(topic)

    def parse_data_key(self, key: bytes) -> tuple[str, str | None, str] | None:
        return self._driver._parse_data_key(key)

    def table_of(self, key: bytes) -> str | None:
        """The table named by a data key that does not parse, when it names one."""
        rest = self._driver._relative(key)
        if rest is not None and rest[:2] == ["d", "n"] and len(rest) >= 3:
            return rest[2]
        if rest is not None and rest[:2] == ["d", "t"] and len(rest) >= 4:
            return rest[3]
        return None

    def endpoints(self) -> _Endpoints:
        driver = self._driver
        conn = _Endpoints(driver, start=driver._sources_started)
        driver._sources_started += 1
        return conn

    @property
    def known_identity(self) -> str | None:
        return self._driver._identity

    async def identity(self) -> str:
        return await self._driver.identity()

    async def current_revision(self) -> int:
        return await self._driver.current_revision()

    async def exists_at(self, key: bytes, revision: int) -> bool:
        """Whether ``key`` existed at store revision ``revision``."""
        reply = await self._driver._range(key, revision=revision, count_only=True)
        return bool(reply.count)
