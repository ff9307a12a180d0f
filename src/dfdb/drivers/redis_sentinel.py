"""``redis+sentinel://`` URLs: Redis behind Sentinel, following the master through failovers.

``redis+sentinel://[user:pass@]h1:26379,h2:26379,h3:26379/MASTER?db=0`` names the
sentinels and the monitored master; the user name and password are those of the
master and its replicas (a Redis ACL user, or none for ``requirepass``). The other
options are those of ``redis://`` (``prefix``, ``maxlen``, ``block``,
``connect_timeout``, ``password_file`` and the TLS options of :mod:`dfdb.tls`), plus:

- ``sentinel_username``, ``sentinel_password`` (percent-encoded; masked wherever the
  URL is shown) or ``sentinel_password_file``: the sentinels' own credentials (their
  ``requirepass`` or an ACL user of theirs); none by default.
- TLS (``rediss+sentinel://`` or ``tls=true``, with ``ca_file``, ``cert_file``,
  ``key_file``, ``server_name``, ``verify``) applies to the master and to the
  sentinels; ``sentinel_tls=false`` speaks plain TCP to the sentinels only, and
  ``sentinel_tls=true`` without ``tls`` speaks TLS to the sentinels only.

- ``min_replicas`` (default 0): a write is confirmed only once that many replicas
  have it (``WAIT``); when they do not within ``min_replicas_timeout`` seconds
  (default 1) the write raises :class:`~dfdb.errors.DriverError` saying it is applied
  on the master but may or may not survive a failover.

Every new connection asks a sentinel for the master, checks that the server it
reached is a master (a replica is refused) and compares the server's replication id
with the one stored at ``P/term``. A different id means a new master term (a
promoted replica): in one atomic step the connection records the dataset's
epoch, the new epoch and the revision counter in ``P/forks`` and makes a new epoch,
before any write of the new term. The promoted replica holds a prefix of the old
master's history, so a change stream whose position is at or below the recorded
counter continues without loss; one beyond it saw writes the new master never got
and gets ``resync``. Revisions of the new term start above the recorded counter, so
a revision that a stream saw for other content is never reused silently.

A user who may only read connects as with ``redis://``: one who may not write leaves
the new term to a writer's connection, and one whose ACL refuses ``INFO`` as well
(``+@read``) is taken at the sentinels' word for the master; such a user lists, watches
and keeps a Replica, and the driver refuses its writes (a write needs the master's
replication id).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff

from dfdb.drivers.base import PutRequest
from dfdb.drivers.redis import RedisDriver
from dfdb.drivers.redis_tls import CONNECTION_ERRORS, ClosingPool, TimedSend, TlsConnection, refused_by_acl
from dfdb.drivers.redis_tls import connection_error as _unavailable
from dfdb.errors import AuthenticationError, BackendUnavailableError, ConfigurationError, DriverError, InvalidURL
from dfdb.retry import close_to_completion
from dfdb.tls import TLS_OPTIONS, TlsSettings, describe_tls_failure, tls_failure, tls_wanted
from dfdb.url import DatabaseURL, Secret, read_password_file

__all__ = ["SentinelDriver"]

log = logging.getLogger(__name__)

_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password", "sentinel_password_file", "sentinel_tls")
_OWN_OPTIONS = ("db", "min_replicas", "min_replicas_timeout", *_SENTINEL_OPTIONS)

# KEYS: term, epoch, rev, forks   ARGV: replication id, new epoch
_NEW_TERM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
local old = redis.call('GET', KEYS[2])
local rev = redis.call('GET', KEYS[3]) or '0'
if old then redis.call('HSET', KEYS[4], old, ARGV[2] .. ' ' .. rev) end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


def _info_fields(raw: Any) -> dict[str, str]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


class _ClosingSentinelPool(SentinelConnectionPool, ClosingPool):
    """The master's connection pool, which stays closed once closed (see :class:`ClosingPool`)."""


class _Sentinel(Sentinel):
    """redis-py's :class:`Sentinel`, asking the sentinels in turn from a copy of their list.

    Its own ``discover_master`` moves the sentinel that answered to the front of the list
    in place, by the index at which it found it, while other connections are going
    through the same list: when several connect at once (every connection of a client
    after a failover) some skip sentinels and fail with ``MasterNotFoundError``, and one
    sentinel's client can be dropped from the list for another twice over (its
    connections were then never closed)."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors = []
        for sentinel in list(self.sentinels):
            try:
                masters: Any = await sentinel.sentinel_masters()  # a dict by master name
            except (rexc.ConnectionError, rexc.TimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                self.sentinels = [sentinel, *(s for s in self.sentinels if s is not sentinel)]
                forced = getattr(self, "_force_master_ip", None)
                return (forced if forced is not None else state["ip"]), state["port"]
        raise MasterNotFoundError(
            f"No master found for {service_name!r}" + (f" : {', '.join(errors)}" if errors else "")
        )


class _MasterConnection(TimedSend, SentinelManagedConnection):
    """A connection to the master the sentinels name, checked and term-stamped on connect."""

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=check_health)
        hook = getattr(self.connection_pool, "dfdb_on_connect", None)
        if hook is not None:
            await hook(self)


class _TlsMasterConnection(_MasterConnection, TlsConnection):
    """A :class:`_MasterConnection` with TLS from dfdb's own ``SSLContext``."""


class SentinelDriver(RedisDriver):
    """The Redis driver behind Sentinel; see the module documentation."""

    def __init__(self, url: DatabaseURL) -> None:
        unknown = set(url.options) - {"prefix", "maxlen", "block", "connect_timeout", *TLS_OPTIONS, *_OWN_OPTIONS}
        if unknown:
            raise InvalidURL(f"unknown {url.scheme}:// option(s): {', '.join(sorted(unknown))}")
        data_tls = tls_wanted(url, url.scheme == "rediss+sentinel")
        sentinel_tls = url.bool_option("sentinel_tls", data_tls)
        options = {k: v for k, v in url.options.items() if k not in _OWN_OPTIONS}
        if sentinel_tls and not data_tls:  # the TLS options are the sentinels' alone
            options = {k: v for k, v in options.items() if k not in TLS_OPTIONS}
        base = DatabaseURL("rediss" if data_tls else "redis", (), url.username, url.password, "", options)
        super().__init__(base)
        self.url = url
        sentinel_settings = TlsSettings.from_url(url, enabled=True) if sentinel_tls else None
        self._sentinel_tls = None if sentinel_settings is None else sentinel_settings.ssl_context()
        self._sentinel_server_name = None if sentinel_settings is None else sentinel_settings.server_name
        self._sentinel_username = url.option("sentinel_username") or None
        password = url.option("sentinel_password")
        path = url.option("sentinel_password_file")
        if path is not None:
            if password is not None:
                raise InvalidURL("give the sentinels' password either in sentinel_password= or in a file, not both")
            password = read_password_file(path, "sentinel_password_file")
        self._sentinel_password = None if not password else Secret(password)
        if not url.hosts:
            raise InvalidURL("redis+sentinel:// names its sentinels: redis+sentinel://h1:26379,h2:26379/MASTER")
        self.sentinels = [(host or "127.0.0.1", port or 26379) for host, port in url.hosts]
        self.service = url.path.strip("/")
        if not self.service or "/" in self.service:
            raise InvalidURL("redis+sentinel:// needs the master's name as its path: redis+sentinel://h1:26379/MASTER")
        self.db = self._kwargs["db"] = url.int_option("db", 0)
        self.min_replicas = url.int_option("min_replicas", 0)
        self.min_replicas_timeout = url.float_option("min_replicas_timeout", 1.0, minimum=0.001)
        self._sentinel: Any = None
        self._sentinel_clients: builtins.list[aioredis.Redis] = []
        self.role_unchecked = False
        """Whether the server refused this user ``INFO``: the master's role and term are not
        checked, and the driver refuses to write."""

    def _sentinel_client(self, host: str, port: int) -> aioredis.Redis:
        """A client of one sentinel, with the sentinels' credentials and TLS."""
        common: dict[str, Any] = {
            "host": host,
            "port": port,
            "username": self._sentinel_username,
            "password": None if self._sentinel_password is None else self._sentinel_password.reveal(),
            "socket_timeout": self.connect_timeout,
            "socket_connect_timeout": self.connect_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if self._sentinel_tls is not None:
            common.update(connection_class=TlsConnection, tls_context=self._sentinel_tls)
            common.update(tls_server_name=self._sentinel_server_name)
        return aioredis.Redis.from_pool(ClosingPool(**common))  # closed with the client

    def _new_client(self, socket_timeout: float | None) -> aioredis.Redis:
        if self._sentinel is None:
            self._sentinel = _Sentinel(self.sentinels, sentinel_kwargs={})  # type: ignore[no-untyped-call]
            self._sentinel_clients = [self._sentinel_client(host, port) for host, port in self.sentinels]
            self._sentinel.sentinels = list(self._sentinel_clients)
        tls: dict[str, Any] = {"connection_class": _MasterConnection}
        if self._tls_context is not None:
            tls = {
                "connection_class": _TlsMasterConnection,
                "tls_context": self._tls_context,
                "tls_server_name": self._tls_server_name,
            }
        client: aioredis.Redis = self._sentinel.master_for(
            self.service,
            redis_class=aioredis.Redis,
            connection_pool_class=_ClosingSentinelPool,
            db=self.db,
            username=self._kwargs["username"],
            password=None if self._password is None else Secret.reveal(self._password),
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=None if socket_timeout is None else socket_timeout + self.min_replicas_timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
            **tls,
        )
        client.connection_pool.dfdb_on_connect = self._on_connect  # type: ignore[attr-defined]
        return client

    async def _on_connect(self, conn: Any) -> None:
        """Refuse a server that is not a master; start a new term when its replication id is new.

        A user whose ACL refuses ``INFO`` is taken at the sentinels' word (the master they
        name) and may not write through this driver (:class:`_Unchecked`); one that may not
        write leaves the new term to a user who may."""
        try:
            await conn.send_command("INFO", "replication")
            info = _info_fields(await conn.read_response())
        except rexc.ResponseError as exc:
            if not refused_by_acl(exc):
                raise
            if not self.role_unchecked:
                log.info("%s: the user may not run INFO: reads only, from the master the sentinels name", self.url)
            self.role_unchecked = True
            return
        if info.get("role") != "master":
            raise rexc.ConnectionError(f"{conn.host}:{conn.port} is a replica, not the master of {self.service!r}")
        replid = info.get("master_replid", "")
        keys = [self._key("term"), self._key("epoch"), self._key("rev"), self._key("forks")]
        await conn.send_command("EVAL", _NEW_TERM, 4, *keys, replid, f"redis-{uuid.uuid4().hex[:16]}")
        try:
            started = await conn.read_response() == 1
        except rexc.ResponseError as exc:
            if not refused_by_acl(exc):
                raise
            return  # a user who may not write: a writer's connection starts the term
        if started:
            log.info("%s: master %s:%s starts a new term (replication id %s)", self.url, conn.host, conn.port, replid)

    async def open(self) -> None:
        try:
            await super().open()
            if self.min_replicas and not isinstance(self._write, _Waiting):  # every write, concurrent ones too
                self._write = _Waiting(self, self._write)
            if not isinstance(self._write, _Unchecked):
                self._write = _Unchecked(self, self._write)
        except DriverError as exc:
            if type(exc) in (BackendUnavailableError, DriverError):  # perhaps a wrong sentinel list
                await self._explain_unavailable()
            raise

    async def _explain_unavailable(self) -> None:
        """Turn an unreachable master into the clearest one-line reason the sentinels give."""
        reachable = 0
        refused: DriverError | None = None
        hung_up = False  # a sentinel that took the connection and closed it: TLS, most likely
        for host, port in self.sentinels:
            client = self._sentinel_client(host, port)
            try:
                await client.execute_command("SENTINEL", "MASTER", self.service)  # type: ignore[no-untyped-call]
                reachable += 1
            except (rexc.AuthenticationError, rexc.AuthenticationWrongNumberOfArgsError, rexc.NoPermissionError) as exc:
                refused = refused or self._sentinel_refusal(host, port, exc)
            except rexc.ResponseError as exc:
                if "unknown command" in str(exc).lower():
                    raise ConfigurationError(
                        f"{self.url}: {host}:{port} is not a Redis Sentinel (it does not know the SENTINEL command): "
                        "list the sentinels' ports (26379 by default), not the master's"
                    ) from None
                if "no such master" in str(exc).lower():
                    raise ConfigurationError(
                        f"{self.url}: the sentinel at {host}:{port} monitors no master named {self.service!r}"
                    ) from None
                reachable += 1
            except CONNECTION_ERRORS as exc:
                if tls_failure(exc) is not None:
                    refused = refused or self._sentinel_refusal(host, port, exc)
                hung_up = hung_up or _hung_up(exc)
                continue
            finally:
                await close_to_completion(client.aclose)
        if not reachable and refused is not None:
            raise refused
        if not reachable:
            where = ", ".join(f"{h}:{p}" for h, p in self.sentinels)
            hint = ""
            if hung_up and self._sentinel_tls is None:
                fix = "drop sentinel_tls=false" if "sentinel_tls" in self.url.options else "add tls=true"
                hint = f"; they closed the connection: if they serve TLS, {fix} (or sentinel_tls=true)"
            raise BackendUnavailableError(f"{self.url}: no sentinel is reachable ({where}){hint}") from None

    def _sentinel_refusal(self, host: str, port: int, exc: BaseException) -> AuthenticationError:
        """The error of a sentinel that refused the connection (credentials, ACL, certificate)."""
        failure = tls_failure(exc)
        if failure is not None:
            reason = describe_tls_failure(failure)
        elif isinstance(exc, rexc.NoPermissionError):
            reason = f"not allowed: {exc} (the sentinel user needs SENTINEL commands)"
        elif self._sentinel_password is None:
            reason = "authentication failed: the sentinel requires a password and the URL gives no sentinel_password"
        else:
            reason = f"authentication failed: {exc}"
        return AuthenticationError(f"{self.url}: the sentinel at {host}:{port}: {reason}")

    async def _close_clients(self) -> None:
        await super()._close_clients()
        clients, self._sentinel_clients, self._sentinel = self._sentinel_clients, [], None
        for client in clients:  # the clients made here: the Sentinel's own list may have been reordered
            with contextlib.suppress(Exception):
                await client.aclose()

    async def continues(self, identity: str, revision: int) -> bool:
        """Whether the current master term holds the history of epoch ``identity`` up to
        ``revision``: it follows ``identity`` through recorded terms, each holding its
        predecessor's changes up to the counter recorded when it began."""
        return await self._history_continues(identity, await self.identity(), revision)

    async def _history_continues(self, known: str, seen: str, position: int) -> bool:
        """Whether the dataset of epoch ``seen`` holds the history of epoch ``known`` up to ``position``."""
        try:
            forks = await self._open_client().hgetall(self._key("forks"))
        except CONNECTION_ERRORS as exc:
            raise _unavailable(self.url, exc) from None
        current = known
        for _ in range(len(forks) + 1):
            if current == seen:
                return True
            record = forks.get(current.encode())
            if record is None:
                return False
            current, counter = record.decode().split(" ", 1)
            if position > int(counter):
                return False
        return False

    # ------------------------------------------------------------ synchronous replicas
    async def put_many(self, writes: Sequence[PutRequest]) -> builtins.list[int | Exception]:
        if not self.min_replicas:
            return await super().put_many(writes)
        results: builtins.list[int | Exception] = []
        for w in writes:  # each write waits for its replicas
            try:
                results.append(await self.put(w.table, w.id, w.topic, w.value, w.expect))
            except BackendUnavailableError:
                raise
            except Exception as exc:
                results.append(exc)
        return results


def _hung_up(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection the server accepted and then closed or reset."""
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, ConnectionResetError | BrokenPipeError) or "closed by server" in str(exc)


class _Waiting:
    """The write script followed by ``WAIT`` on the same connection."""

    def __init__(self, driver: SentinelDriver, script: Any) -> None:
        self._driver = driver
        self._script = script

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        driver = self._driver
        async with driver._open_client().pipeline(transaction=False) as pipe:  # one connection for both
            await self._script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", driver.min_replicas, int(driver.min_replicas_timeout * 1000))
            reply, acked = await pipe.execute()
        if (type(reply) is int or reply[0] == b"OK") and int(acked) < driver.min_replicas:  # a write done
            raise DriverError(
                f"{driver.url}: the write is applied on the master but only {acked} of {driver.min_replicas} "
                f"replica(s) confirmed it within {driver.min_replicas_timeout:g}s: it may or may not survive a failover"
            )
        return reply


class _Unchecked:
    """The write script, refused while the master's role and term could not be checked: a
    write on a promoted replica before its new term would reuse revisions a stream saw."""

    def __init__(self, driver: SentinelDriver, script: Any) -> None:
        self._driver = driver
        self._script = script

    def __call__(self, keys: Sequence[str], args: Sequence[Any], client: Any = None) -> Any:
        driver = self._driver
        if driver.role_unchecked:  # the driver reports it as the server's own ACL refusals
            raise rexc.NoPermissionError(
                "this user may not run 'info', which a write behind Sentinel needs (the master's "
                "replication id marks a new term after a failover); nothing was written"
            )
        if client is None:
            return self._script(keys=keys, args=args)
        return self._script(keys=keys, args=args, client=client)
