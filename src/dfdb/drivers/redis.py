"""``redis://``, ``rediss://`` and ``unix://`` URLs: Redis with a durable change stream.

Layout under a key prefix (option ``prefix``, default ``dfdb``), ``/`` separated
since ids, topics and tables never contain one::

    P/epoch                  this dataset's identity (recreated when data is lost)
    P/rev                    the revision counter (INCR)
    P/e/TABLE/ID             hash: v (value), r (revision), t (topic, "" for none)
    P/i/TABLE                set of ids;  P/i/TABLE/t/TOPIC, P/i/TABLE/n: ids by topic
    P/s/TABLE                stream of every change of the table
    P/s/TABLE/t/TOPIC        stream of one topic;  P/s/TABLE/n: topic-less objects
    P/trim                   hash: stream key -> highest revision trimmed from it

One Lua script checks a write's expectation, changes the value, takes the next
revision from ``P/rev`` and appends the change with stream entry id
``<revision>-0`` to the table stream and to the topic stream. One integer cursor
thus resumes every stream, and a topic subscription reads only its own streams.
A batch (``put_many``) is one pipeline of script calls, each making up to 64 writes
(fewer once their values reach 1 MiB) in order, each with its own outcome.
Streams are trimmed to ``maxlen`` entries (default 100,000, in steps of a tenth),
the highest discarded revision recorded in ``P/trim`` by the same script; a position
below it yields ``resync``, and so does a dataset whose
epoch changed (a server that came back without its data, ``FLUSHALL``, another
server) or whose counter went back below the position.

Options: ``prefix``, ``maxlen``, ``block`` (seconds a blocking read waits before
re-checking the epoch, default 1), ``connect_timeout`` (default 5), and the TLS
options of :mod:`dfdb.tls` (``rediss://`` or ``tls=true``; ``ca_file``,
``cert_file``, ``key_file``, ``server_name``, ``verify``). A user name in the URL
is a Redis ACL user.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import uuid
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from dfdb.drivers import redis_scripts as lua
from dfdb.drivers.base import (
    Capability,
    Driver,
    Entry,
    EventSource,
    Expect,
    Listing,
    PutRequest,
)
from dfdb.drivers.redis_digest import RedisDigest
from dfdb.drivers.redis_leases import RedisLeases
from dfdb.drivers.redis_listing import entries_of, list_many
from dfdb.drivers.redis_scripts import COMPACT, DIGEST, LIST_ROUND, NEW_EPOCH, WRITE, WRITE_MANY
from dfdb.drivers.redis_streams import NO_EPOCH, RedisSource
from dfdb.drivers.redis_tls import (
    CONNECTION_ERRORS,
    ClosingPool,
    PlainConnection,
    TlsConnection,
    UnixConnection,
    refused_by_acl,
)
from dfdb.drivers.redis_tls import connection_error as _unavailable

try:  # redis-py 7.1+ reads its own version from the package metadata for every client made
    # without it (a file parse each): read once per process
    from redis.driver_info import DriverInfo

    _DRIVER_INFO: dict[str, Any] = {"driver_info": DriverInfo()}
except ImportError:  # older redis-py: lib_name and lib_version, resolved once at import
    _DRIVER_INFO = {}
from dfdb.errors import (
    AlreadyExistsError,
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    CorruptObjectError,
    DriverError,
    InvalidURL,
    LeaseLostError,
    NotFoundError,
)
from dfdb.retry import close_to_completion
from dfdb.tls import TLS_OPTIONS, TlsSettings, protocol_mismatch
from dfdb.url import DatabaseURL, Secret

__all__ = ["RedisDriver"]

log = logging.getLogger(__name__)

_SCAN_BATCH = 1000
"""Ids the digest script reads per call (each call holds the server for about 10 ms)."""


class RedisDriver(RedisDigest, RedisLeases, Driver):
    """The Redis driver; see the module documentation."""

    capabilities = Capability.NATIVE_STREAM | Capability.CHANGE_LOG | Capability.ORDERED | Capability.TOPIC_FILTER
    capabilities |= Capability.LEASES
    max_value_size = 16 * 1024 * 1024  # each write is kept three times: the entry and two stream entries
    unnamed_identities = frozenset({NO_EPOCH})  # a reader's identity before any writer made an epoch
    requires_asyncio = True

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(url)
        known = {"prefix", "maxlen", "block", "connect_timeout"} | ({"db"} if url.scheme == "unix" else TLS_OPTIONS)
        unknown = set(url.options) - known
        if unknown:
            raise InvalidURL(f"unknown {url.scheme}:// option(s): {', '.join(sorted(unknown))}")
        self.prefix = url.option("prefix", "dfdb") or "dfdb"
        if "/" in self.prefix:
            raise InvalidURL("the redis prefix must not contain '/'")
        self.maxlen = url.int_option("maxlen", 100_000, minimum=1)
        self.block = url.float_option("block", 1.0, minimum=0.01)
        self.connect_timeout = url.float_option("connect_timeout", 5.0, minimum=0.01)
        self._kwargs = self._client_kwargs(url)
        self._password = url.secret  # masked in any repr; revealed only to redis-py
        tls = None if url.scheme == "unix" else TlsSettings.from_url(url, enabled=url.scheme == "rediss")
        self._tls_context = None if tls is None else tls.ssl_context()
        self._tls_server_name = None if tls is None else tls.server_name
        self._client: Any = None
        self._reader_client: Any = None
        self._write: Any = None
        self._write_many: Any = None
        self._new_epoch: Any = None
        self._compact: Any = None
        self._list_round: Any = None
        self._plain_reads = False  # the user may not run scripts: lists by plain commands
        self.epoch = ""

    def _client_kwargs(self, url: DatabaseURL) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"username": url.username}
        if url.scheme == "unix":
            if not url.path:
                raise InvalidURL("unix:// needs a socket path: unix:///run/redis.sock")
            kwargs["unix_socket_path"] = "/" + url.path.lstrip("/")
            db = url.int_option("db", 0) if "db" in url.options else 0
        else:
            if len(url.hosts) > 1:
                raise InvalidURL("redis:// takes one host (Redis Cluster is not supported)")
            host, port = url.hosts[0] if url.hosts else ("127.0.0.1", None)
            kwargs["host"] = host or "127.0.0.1"
            kwargs["port"] = port or 6379
            try:
                db = int(url.path) if url.path else 0
            except ValueError:
                raise InvalidURL(f"the redis database must be a number, not {url.path!r}") from None
        kwargs["db"] = db
        return kwargs

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def _new_client(self, socket_timeout: float | None) -> aioredis.Redis:
        kw = self._kwargs
        common: dict[str, Any] = {
            "db": kw["db"],
            "username": kw["username"],
            "password": None if self._password is None else Secret.reveal(self._password),
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": socket_timeout,
            "retry": Retry(NoBackoff(), 0),  # dfdb retries, idempotently; redis-py must not
            "decode_responses": False,
            **_DRIVER_INFO,
        }
        if "unix_socket_path" in kw:
            pool = ClosingPool(connection_class=UnixConnection, path=kw["unix_socket_path"], **common)
        elif self._tls_context is None:
            pool = ClosingPool(connection_class=PlainConnection, host=kw["host"], port=kw["port"], **common)
        else:
            common.update(tls_context=self._tls_context, tls_server_name=self._tls_server_name)
            pool = ClosingPool(connection_class=TlsConnection, host=kw["host"], port=kw["port"], **common)
        return aioredis.Redis.from_pool(pool)  # closed with the client

    # ------------------------------------------------------------ connection
    async def open(self) -> None:
        await super().open()
        if self._client is not None:
            return
        self._client = self._new_client(socket_timeout=max(5.0, self.connect_timeout))
        self._reader_client = self._new_client(socket_timeout=self.block + max(5.0, self.connect_timeout))
        self._write = self._client.register_script(WRITE)
        self._write_many = self._client.register_script(WRITE_MANY)
        self._new_epoch = self._client.register_script(NEW_EPOCH)
        self._compact = self._client.register_script(COMPACT)
        self._digest = self._client.register_script(DIGEST)
        self._list_round = self._client.register_script(LIST_ROUND)
        try:
            await self._check_server()
            await self.refresh_epoch()
        except BackendUnavailableError:
            await close_to_completion(self._close_clients)
            await self._refuse_mismatch()
            raise
        except BaseException:  # cut by the caller's deadline, too: close all the same
            await close_to_completion(self._close_clients)
            raise
        log.debug("connected to %s (epoch %s)", self.url, self.epoch)

    async def _refuse_mismatch(self) -> None:
        """Raise one permanent error when the server could not be reached because it speaks
        TLS and the URL does not (or the reverse), instead of retrying until the time-out."""
        host, port = self._kwargs.get("host"), self._kwargs.get("port")
        if host is None or port is None:
            return
        tls = self._tls_context is not None
        reason = await protocol_mismatch([(host, port)], tls=tls, request=b"PING\r\n", answers=(b"+", b"-"))
        if reason is not None:
            raise AuthenticationError(f"{self.url}: {reason}")

    async def _check_server(self) -> None:
        """Refuse a Redis Cluster node and a replica with one clear line (a user whose ACL
        refuses INFO skips the check: a replica refuses its writes anyway)."""
        try:
            info = await self._open_client().info()  # the default sections: server, replication, cluster …
        except rexc.NoPermissionError:
            return
        except CONNECTION_ERRORS as exc:
            raise _unavailable(self.url, exc) from None
        except rexc.ResponseError as exc:
            if "db index is out of range" in str(exc).lower():
                raise ConfigurationError(
                    f"{self.url}: db={self._kwargs.get('db', 0)} is out of range: the server has fewer databases "
                    "(its 'databases' setting, 16 by default)"
                ) from None
            raise DriverError(f"{self.url}: {exc}") from None
        except rexc.RedisError as exc:
            raise DriverError(f"{self.url}: {exc}") from None
        if info.get("redis_mode") == "sentinel":
            raise ConfigurationError(
                f"{self.url}: this server is a Redis Sentinel, not a data server: use redis+sentinel://SENTINELS/MASTER"
            )
        if info.get("cluster_enabled") == 1 or info.get("redis_mode") == "cluster":
            raise ConfigurationError(
                f"{self.url}: Redis Cluster is not supported (dfdb keeps one revision order per database "
                "in one slot); use a single master, with Sentinel for failover"
            )
        if info.get("role") != "master":
            master = f"{info.get('master_host')}:{info.get('master_port')}"
            raise ConfigurationError(
                f"{self.url}: this server is a read-only replica of {master}; give the master, "
                "or redis+sentinel://SENTINELS/MASTER to follow failovers"
            )

    async def _history_continues(self, known: str, seen: str, position: int) -> bool:
        """Whether the dataset of epoch ``seen`` holds the history of epoch ``known`` up to
        ``position`` (a new master term; see :mod:`dfdb.drivers.redis_sentinel`)."""
        return False

    async def _close_clients(self) -> None:
        for client in (self._client, self._reader_client):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._client = self._reader_client = None

    async def _release(self) -> None:
        await self._close_clients()

    def _open_client(self) -> Any:  # redis-py's reply types are unions of bytes/str/None; checked here by hand
        self._check_open()
        if self._client is None:
            raise RuntimeError("the driver is not open; use 'async with' or 'await open()'")
        return self._client

    async def refresh_epoch(self, stale: str | None = None) -> str:
        """Read the dataset's epoch, creating one when absent (or replacing ``stale``).

        A user who may only read follows the epoch that writers make: the one on the
        server, or :data:`NO_EPOCH` while there is none."""
        client = self._open_client()
        key = self._key("epoch")
        fresh = f"redis-{uuid.uuid4().hex[:16]}"
        try:
            raw = await client.get(key) if stale is None else None
            if raw is None:
                try:
                    if stale is None:
                        await client.set(key, fresh, nx=True)
                        raw = await client.get(key)
                    else:
                        raw = await self._new_epoch(keys=[key], args=[stale, fresh])
                except rexc.ResponseError as exc:
                    if not refused_by_acl(exc):
                        raise
                    raw = await client.get(key)
        except CONNECTION_ERRORS as exc:
            raise _unavailable(self.url, exc) from None
        except rexc.RedisError as exc:
            raise DriverError(f"{self.url}: {exc}") from None
        self.epoch = NO_EPOCH if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)
        return self.epoch

    # ------------------------------------------------------------ contract
    async def identity(self) -> str:
        await self._adopt_epoch()
        return self.epoch

    async def _adopt_epoch(self, raw: bytes | None = None, *, read: bool = True) -> None:
        """Follow the server's epoch: adopt another one, or make one when it is gone."""
        if read:
            try:
                raw = await self._open_client().get(self._key("epoch"))
            except CONNECTION_ERRORS as exc:
                raise _unavailable(self.url, exc) from None
        if raw is None:
            if self.epoch != NO_EPOCH:  # one that may only read cannot make one
                await self.refresh_epoch(stale="")
        else:
            self.epoch = raw.decode()

    async def get(self, table: str, id: str) -> Entry | None:
        try:
            row = await self._open_client().hmget(self._key("e", table, id), "r", "t", "v")
        except CONNECTION_ERRORS as exc:
            raise _unavailable(self.url, exc) from None
        except rexc.ResponseError as exc:  # e.g. another program wrote a string there
            raise CorruptObjectError(table, id, f"not a dfdb entry ({exc})") from None
        return lua.entry_of(table, id, row)

    async def _run_write(
        self, table: str, id: str, op: str, expect: str, topic: str, value: bytes, extra: tuple[str, ...] = ()
    ) -> tuple[int, str | None, bytes]:
        entry_key = self._key("e", table, id)
        for _ in range(3):
            try:
                reply = await self._write(
                    keys=[entry_key, self._key("rev"), self._key("epoch")],
                    args=[self.prefix, table, id, op, expect, topic, value, self.maxlen, self.epoch, *extra],
                )
            except CONNECTION_ERRORS as exc:
                raise _unavailable(self.url, exc) from None
            except rexc.ResponseError as exc:
                if "WRONGTYPE" in str(exc):
                    raise CorruptObjectError(table, id, "not a dfdb entry (wrong Redis type)") from None
                raise DriverError(f"{self.url}: {exc}") from None
            except rexc.RedisError as exc:
                raise DriverError(f"{self.url}: {exc}") from None
            if type(reply) is not int and reply[0] == b"EPOCH":  # the data set changed: adopt its epoch (or make one)
                await self._adopt_epoch(reply[1] or None, read=False)
                continue
            return self._reply(table, id, expect, topic, value, reply)
        raise BackendUnavailableError(f"{self.url}: the dataset keeps changing its epoch")

    async def put_many(self, writes: Sequence[PutRequest]) -> builtins.list[int | Exception]:
        """One pipeline of batch write scripts (:func:`.redis_scripts.write_calls`), each
        making several writes with an outcome each: one round trip for the whole batch."""
        client = self._open_client()
        calls = lua.write_calls(writes)
        keys = [self._key("epoch"), self._key("rev")]
        for _ in range(3):
            # closed on the way out: a pipeline that failed while loading its script keeps its connection
            async with client.pipeline(transaction=False) as pipe:
                for call in calls:  # queues EVALSHA on the pipeline
                    await self._write_many(keys=keys, args=lua.write_many_args(self, call), client=pipe)
                try:
                    replies = await pipe.execute(raise_on_error=False)
                except CONNECTION_ERRORS as exc:
                    raise _unavailable(self.url, exc) from None
            stale = [r for r in replies if isinstance(r, list) and r and r[0] == b"EPOCH"]
            if stale:
                await self._adopt_epoch(stale[0][1] or None, read=False)
                if len(stale) == len(replies):
                    continue
                # mixed replies: the epoch changed mid-batch; those writes report BackendUnavailableError
            results: builtins.list[int | Exception] = []
            for call, reply in zip(calls, replies, strict=True):
                for w, outcome in zip(call, lua.write_many_outcomes(reply, len(call)), strict=True):
                    results.append(outcome if type(outcome) is int else self._outcome(w, outcome))
            return results
        raise BackendUnavailableError(f"{self.url}: the dataset keeps changing its epoch")

    def _outcome(self, w: PutRequest, reply: Any) -> int | Exception:
        """The revision of one write of a batch, or the error that refused it."""
        try:
            if isinstance(reply, Exception):
                raise reply
            return self._reply(w.table, w.id, str(w.expect), w.topic or "", w.value, reply)[0]
        except (DriverError, CorruptObjectError, AlreadyExistsError, NotFoundError, ConflictError, ValueError) as exc:
            return exc
        except rexc.RedisError as exc:
            return DriverError(f"{self.url}: {exc}")

    def _reply(
        self, table: str, id: str, expect: str, topic: str, value: bytes, reply: Any
    ) -> tuple[int, str | None, bytes]:
        """Interpret the write script's reply (EPOCH is handled by the caller): the
        revision, and the topic and value written (a delete's come from the server)."""
        if type(reply) is int:  # a put done
            return reply, topic or None, value
        status, detail = reply[0].decode(), reply[1]
        if status == "OK":  # a delete done
            return int(detail), reply[2].decode() or None, reply[3]
        if status == "EPOCH":
            raise BackendUnavailableError(f"{self.url}: the dataset changed during the write")
        if status in ("LEASE", "GUARD"):
            what = "lease" if status == "LEASE" else "lock"
            raise LeaseLostError(f"{table}/{id} was not written: {what} {detail.decode()!r} is no longer held")
        if status == "EXISTS":
            raise AlreadyExistsError(f"{table}/{id} already exists")
        if status == "NOTFOUND":
            raise NotFoundError(f"{table}/{id} not found")
        if status == "CONFLICT":
            raise ConflictError(f"{table}/{id} is at revision {detail.decode()}, not {expect}")
        if status == "WRONGTYPE":
            raise CorruptObjectError(table, id, f"not a dfdb entry (a Redis {detail.decode()})")
        if status == "NOPERM":
            raise AuthenticationError(
                f"{self.url}: not allowed: this user may not run {detail.decode()!r}, nothing was written "
                "(check the user's ACL: keys, channels and commands of the prefix)"
            )
        if status == "TOPIC":
            raise ValueError(f"{table}/{id} belongs to topic {detail.decode() or None!r}, not {topic or None!r}")
        raise DriverError(f"{self.url}: unexpected reply {status!r} from the write script")

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        exp = lua.expect_arg(expect)
        return (await self._run_write(table, id, "put", exp, topic or "", value))[0]

    async def delete(self, table: str, id: str, expect: int | None = None) -> Entry:
        exp = "any" if expect is None else str(expect)
        revision, topic, value = await self._run_write(table, id, "delete", exp, "", b"")
        return Entry(table, id, topic, value, revision)

    async def list(self, table: str, topic: str | None = None) -> Listing:
        client = self._open_client()
        index = self._key("i", table) if topic is None else self._key("i", table, "t", topic)
        entries: builtins.list[Entry] = []
        try:
            raw_epoch, raw_rev = await client.mget([self._key("epoch"), self._key("rev")])  # one atomic read
            revision = int(raw_rev or 0)
            if (raw_epoch.decode() if raw_epoch else NO_EPOCH) != self.epoch:
                await self._adopt_epoch(raw_epoch, read=False)
                if raw_epoch is None:
                    revision = 0
            cursor: bytes | int = 0
            entry_prefix = self._key("e", table, "")
            while True:  # one round trip per round: SSCAN and the entries it names, in one script
                cursor, rows = await self._listing_round(index, cursor, entry_prefix)
                entries += entries_of(table, rows)
                if cursor in (b"0", 0):
                    break
        except CONNECTION_ERRORS as exc:
            raise _unavailable(self.url, exc) from None
        return Listing(entries, revision, self.epoch)

    async def list_many(self, scopes: Sequence[tuple[str, str | None]]) -> builtins.list[Listing]:
        """The listings of several (table, topic) scopes, in few round trips (:mod:`.redis_listing`)."""
        return await list_many(self, scopes, _SCAN_BATCH)

    async def _listing_round(
        self, index: str, cursor: bytes | int, entry_prefix: str
    ) -> tuple[bytes | int, Iterable[tuple[str, builtins.list[bytes | None]]]]:
        """One round of a listing: the next SSCAN cursor and the (id, [r, t, v]) it names. One
        script call; for a user whose ACL refuses scripts, SSCAN then one pipeline of HMGET."""
        if not self._plain_reads:
            try:
                cursor, packed = await self._list_round(keys=[index], args=[cursor, _SCAN_BATCH, entry_prefix])
                return cursor, lua.unpack_round(packed)
            except rexc.NoPermissionError:
                self._plain_reads = True
        cursor, ids = await self._open_client().sscan(index, cursor, count=_SCAN_BATCH)
        pipe = self._open_client().pipeline(transaction=False)
        for raw_id in ids:
            pipe.hmget(entry_prefix.encode() + raw_id, "r", "t", "v")
        replies = await pipe.execute(raise_on_error=False)
        return cursor, [lua.plain_row(raw_id, reply) for raw_id, reply in zip(ids, replies, strict=True)]

    async def watch(
        self,
        tables: Collection[str],
        topics: Collection[str | None] | None = None,
        since: int | None = None,
    ) -> EventSource:
        self._open_client()
        if since is None:
            try:
                since = int(await self._open_client().get(self._key("rev")) or 0)
            except CONNECTION_ERRORS as exc:
                raise _unavailable(self.url, exc) from None
        streams: builtins.list[str] = []
        for table in sorted(set(tables)):
            if topics is None:
                streams.append(self._key("s", table))
            else:
                streams.extend(
                    self._key("s", table, "n") if topic is None else self._key("s", table, "t", topic)
                    for topic in sorted(topics, key=lambda t: (t is None, t or ""))
                )
        return self._track(RedisSource(_SourceAccess(self), streams, since, sorted(set(tables)), topics))

    async def tables(self) -> builtins.list[str]:
        """The tables whose id set ``P/i/TABLE`` exists (Redis drops an empty set)."""
        client = self._open_client()
        head = self._key("i", "")
        names: set[str] = set()
        try:
            async for raw in client.scan_iter(match=lua.glob_escape(head) + "*", count=_SCAN_BATCH):
                rest = raw.decode(errors="replace")[len(head) :]
                if rest and "/" not in rest:
                    names.add(rest)
        except CONNECTION_ERRORS as exc:
            raise _unavailable(self.url, exc) from None
        return sorted(names)

    async def allocate_unique_key(self, table: str) -> int:
        try:
            return int(await self._open_client().incr(self._key("keys", table)))
        except CONNECTION_ERRORS as exc:
            raise _unavailable(self.url, exc) from None

    async def compact(self) -> None:
        client = self._open_client()
        try:
            async for key in client.scan_iter(match=self._key("s", "*"), count=1000):
                await self._compact(keys=[self._key("trim"), key])
        except CONNECTION_ERRORS as exc:
            raise _unavailable(self.url, exc) from None


class _SourceAccess:
    """What a :class:`RedisSource` may use of its driver: the key layout, the reader
    connection, the blocking time, and the dataset's epoch (adopted or made anew when
    the dataset changed)."""

    def __init__(self, driver: RedisDriver) -> None:
        self._driver = driver
        self.block = driver.block

    def key(self, *parts: str) -> str:
        return self._driver._key(*parts)

    def refused(self, exc: BaseException) -> DriverError:
        """The dfdb error of a refusal by the server (credentials, ACL) met while reading."""
        return _unavailable(self._driver.url, exc)

    def stream_table(self, stream: str) -> str:
        """The table of a stream key ``P/s/TABLE[/…]``."""
        return stream[len(self._driver.prefix) + 3 :].split("/", 1)[0]

    def client(self) -> Any:
        """The connection for blocking reads.

        Raises:
            StopAsyncIteration: the driver was closed.
        """
        client = self._driver._reader_client
        if client is None:
            raise StopAsyncIteration
        return client

    @property
    def epoch(self) -> str:
        return self._driver.epoch

    async def reap_due(self) -> None:
        """End the leases whose deadline passed (at most every quarter second)."""
        await self._driver.reap_due()

    async def continues(self, known: str, seen: str, position: int) -> bool:
        """Whether epoch ``seen`` continues the history of ``known`` at least up to ``position``."""
        return await self._driver._history_continues(known, seen, position)

    async def new_dataset(self, seen: str, known: str) -> tuple[str, int]:
        """The dataset is not the one read so far (``seen``: the epoch on the server now,
        empty when gone; ``known``: the one read so far): adopt ``seen`` or make a new
        epoch. Returns the epoch and the counter from which to go on."""
        driver = self._driver
        if seen and seen == known:  # the same epoch but a counter that went back: not the same data
            await driver.refresh_epoch(stale=seen)
        else:  # another epoch, or none: adopt it, or make one
            await driver._adopt_epoch(seen.encode() or None, read=False)
        fresh = driver.epoch
        now = int(await self.client().get(self.key("rev")) or 0)
        log.debug("redis dataset changed (epoch %s -> %s); resync from %d", known, fresh, now)
        return fresh, now
