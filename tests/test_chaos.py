"""The chaos suite: random operations and faults against a plain model, then a history check.

A Hypothesis state machine owns an event loop and, on one backend, drives the NbApi
(create, update, patch, delete, create_many, stale updates that must conflict, reads),
three watchers (every topic; one topic and topic-less objects; one read only at the end),
resumed from their cursor now and then and read with short random timeouts, and two
Replicas (FULL, and SELECTIVE with topics added and removed), while it injects faults of
one family:

``plain``    none beyond the stale updates and short read timeouts;
``cancel``   writes cancelled at a random await point, writes under a random deadline;
``cancel-topics`` a SELECTIVE Replica's add_topic / remove_topic cancelled at a random
             await point, then done again;
``corrupt``  values that fail validation written straight into the backend, then repaired;
``server``   (server backends) kill -9 and restart, SIGSTOP during a write, dropped
             connections (Redis).

Every write is recorded with its outcome (ok / failed / unknown) and every read is
checked against the states the outcomes allow. At the end: the database holds, per key,
a state the history allows (no acknowledged write lost, none applied twice: versions);
each watcher's sequence is a sub-history of the database's (per key increasing
revisions, only writes that did not fail, every acknowledged one unless a RESYNC covers
it) and its final view equals the database; every Replica equals the database after
``wait_for`` the latest revision; nothing is left running.

memory:// and sqlite run in the default suite (a few examples); ``DFDB_CHAOS=1`` (``nox -s
chaos``) runs every URL of the ``dfdb_urls`` ini with more examples (``DFDB_CHAOS_EXAMPLES``).
The default suite uses one fixed seed per case; ``nox -s chaos`` a fresh one, printed;
``pytest tests/test_chaos.py --hypothesis-seed=N`` (or ``nox -s chaos -- --hypothesis-seed=N``) replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
import zlib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import dfdb
from dfdb import NbApi, Replica, SyncMode, revision_of
from dfdb.errors import (
    AlreadyExistsError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConflictError,
    CorruptObjectError,
    NotFoundError,
    StreamClosedError,
)
from dfdb.events import ChangeStream, parse_cursor
from dfdb.testing.chaos import (
    ChaosItem,
    History,
    Outcome,
    ServerFaults,
    State,
    WatchLog,
    corrupt,
    run_stepped,
    state_of,
)
from dfdb.testing.leaks import ResourceSnapshot
from dfdb.testing.servers import EtcdServer, LocalServer, RedisServer, ZooKeeperServer
from watching import serve

KEYS = ["k0", "k1", "k2", "k3", "k4"]
TOPICS = ["t0", "t1", "t2"]
BAD = ["bad0", "bad1"]
FAMILIES = ["plain", "cancel", "cancel-topics", "corrupt", "server"]
DEFAULT_URLS = ["memory://{name}", "sqlite:///{tmp}/{name}.db"]
FULL = bool(os.environ.get("DFDB_CHAOS"))
SHRINK = os.environ.get("DFDB_CHAOS_SHRINK", "1") != "0"

pytestmark = pytest.mark.timeout(900)

KNOWN_BUGS: dict[tuple[str, str], str] = {}
"""(fault family, backend id) -> the bug that fails the run today (strict xfail: it passes once fixed)."""


def _url_id(url: str) -> str:
    return url.split("?", 1)[0].split("://", 1)[0] + ("-poll" if "notifications=poll" in url else "")


def _server_kind(url: str) -> str | None:
    for kind in ("redis", "etcd", "zookeeper"):
        if "{" + kind + "}" in url:
            return kind
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "chaos_case" in metafunc.fixturenames:
        config = metafunc.config
        urls = config.getoption("dfdb_url") or (config.getini("dfdb_urls") if FULL else DEFAULT_URLS)
        params = []
        for url in urls:
            for family in FAMILIES:
                if family == "server" and _server_kind(url) is None:
                    continue
                reason = KNOWN_BUGS.get((family, _url_id(url)))
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                params.append(pytest.param((url, family), id=f"{_url_id(url)}-{family}", marks=marks))
        metafunc.parametrize("chaos_case", params)


# ---------------------------------------------------------------- servers (restartable, own data)
@pytest.fixture(scope="module")
def chaos_redis() -> Iterator[LocalServer]:
    yield from serve(lambda: RedisServer(appendonly=True))  # a restart keeps every acknowledged write


@pytest.fixture(scope="module")
def chaos_etcd() -> Iterator[LocalServer]:
    for server in serve(lambda: EtcdServer()):
        # grpc starts a poller thread and opens descriptors for the whole process on its first
        # channel: one connection before any run keeps them out of every run's resource count
        asyncio.run(_touch(server.url + "/warm-up"))
        yield server


async def _touch(url: str) -> None:
    async with dfdb.connect(url) as nb:
        await nb.driver.identity()


@pytest.fixture(scope="module")
def chaos_zookeeper() -> Iterator[LocalServer]:
    yield from serve(lambda: ZooKeeperServer())


# ---------------------------------------------------------------- the environment of one run
class Env:
    """How a machine reaches its backend: a URL template and, for servers, the faults."""

    def __init__(self, template: str, family: str, tmp: Path, server: LocalServer | None) -> None:
        self.template = template
        self.family = family
        self.tmp = tmp
        self.server = server
        self.faults = ServerFaults(server) if server is not None else None
        self.timeout = 2.0 if server is None else 5.0
        kind = _server_kind(template)
        if server is not None and kind is not None:
            self.template = template.replace("{" + kind + "}", server.url.split("://", 1)[1].split("/", 1)[0])

    def fresh_url(self) -> str:
        return self.template.replace("{name}", "x" + uuid.uuid4().hex[:12]).replace("{tmp}", str(self.tmp))


class Unsettled(Exception):
    """The backend did not come back in time for the final check."""


def _classify(exc: BaseException | None) -> Outcome:
    if exc is None:
        return "ok"
    if isinstance(exc, AlreadyExistsError | ConflictError | NotFoundError | CorruptObjectError):
        return "failed"
    if isinstance(exc, asyncio.CancelledError | TimeoutError | BackendUnavailableError | BackendTimeoutError):
        return "unknown"  # OutcomeUnknownError is a BackendUnavailableError
    raise exc


class Watcher:
    """One ``nb.watch`` followed by the machine, resumed from its cursor when closed."""

    def __init__(self, name: str, topics: frozenset[str | None] | None, start: int, exact: bool) -> None:
        self.log = WatchLog(name, topics, start, exact)
        self.stream: ChangeStream | None = None
        self.cursor = ""


class ChaosMachine(RuleBasedStateMachine):
    """See the module documentation."""

    env: ClassVar[Env]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.history = History()
        self.copies: dict[str, list[dfdb.NbModel]] = {k: [] for k in KEYS}
        self.bad: set[str] = set()
        self.tags = 0
        self.reported = False
        self.syncs: list[str] = []
        self.baseline = self.loop.run_until_complete(self._snapshot())
        self.run(self._open())

    # ------------------------------------------------------------ plumbing
    def run(self, coro: Coroutine[Any, Any, Any], within: float = 60.0) -> Any:
        async def bounded() -> Any:
            try:
                async with asyncio.timeout(within):
                    return await coro
            except TimeoutError:
                raise AssertionError(f"a step did not finish within {within:g}s (a hang)") from None

        try:
            return self.loop.run_until_complete(bounded())
        except BaseException:
            self.reported = True  # the step failed: teardown only closes
            raise

    @staticmethod
    async def _snapshot() -> ResourceSnapshot:
        return ResourceSnapshot.take()

    def tag(self) -> str:
        self.tags += 1
        return f"w{self.tags}"

    async def _open(self) -> None:
        env = self.env
        self.nb: NbApi = dfdb.connect(env.fresh_url(), timeout=env.timeout)
        await self.nb.open()
        listing = await self.nb.list(ChaosItem)
        start = parse_cursor(listing.cursor)[1]
        exact = self.nb.exact
        self.watchers = [
            Watcher("watch(all)", None, start, exact),
            Watcher("watch(t0,None)", frozenset({"t0", None}), start, exact),
            Watcher("watch(all, read at the end)", None, start, exact),
        ]
        for w in self.watchers:
            w.cursor = listing.cursor
            await self._reopen(w)
        self.full = Replica(self.nb, [ChaosItem])
        await self.full.__aenter__()
        self.selective = Replica(self.nb, [ChaosItem], mode=SyncMode.SELECTIVE, topics={"t0"})
        await self.selective.__aenter__()

    async def _reopen(self, w: Watcher) -> None:
        stream = self.nb.watch(ChaosItem, topics=w.log.topics, since=w.cursor)
        await stream.open()
        w.stream = stream

    async def _relist(self) -> tuple[list[dfdb.NbModel], int]:
        listing = await self.nb.list(ChaosItem)
        return list(listing.items), parse_cursor(listing.cursor)[1]

    def allowed(self, key: str, ok: Callable[[State], bool], what: str) -> None:
        states = self.history.model(key).states
        if not any(ok(s) for s in states):
            self.history.violations.append(
                f"{what} on {key}, but the history allows only {sorted(map(str, states))} "
                f"(history of the key: {self.history.describe(key)})"
            )

    # ------------------------------------------------------------ writes
    def _prepare(
        self, kind: str, key: str, topic: str | None, n: int, stale: bool = False
    ) -> tuple[Callable[[], Coroutine[Any, Any, Any]], str, str | None, set[State], Callable[[Outcome, Any], None]]:
        """The call for one write, its tag and topic, the states it may leave, and its outcome check."""
        tag = self.tag()
        model = self.history.model(key)
        if kind == "create":

            def check(outcome: Outcome, exc: Any) -> None:
                if outcome == "ok":
                    self.allowed(key, lambda s: s is None, "create succeeded")
                elif isinstance(exc, AlreadyExistsError):
                    self.allowed(key, lambda s: s is not None, "create found the object existing")

            obj = ChaosItem(id=key, topic=topic, n=n, tag=tag)
            return (lambda: self.nb.create(obj)), tag, topic, {(1, tag)}, check
        if kind == "update":
            copies = self.copies[key]
            current = model.version()
            candidates = [c for c in copies if stale and current is not None and c.version < current]
            base = candidates[n % len(candidates)] if candidates else (copies[-1] if copies else None)
            if base is None:
                base = ChaosItem(id=key, topic=topic, version=1)
            new = base.model_copy(update={"n": n, "tag": tag})
            before = state_of(base) if copies else None

            def check(outcome: Outcome, exc: Any) -> None:
                if outcome == "ok":
                    self.allowed(
                        key,
                        lambda s: s == before or (before is None and s is not None and s[0] == 1),
                        f"an update from version {base.version} succeeded",
                    )
                elif isinstance(exc, ConflictError):
                    self.allowed(key, lambda s: s is not None and s != before, "an update conflicted")

            return (lambda: self.nb.update(new)), tag, base.topic, {(base.version + 1, tag)}, check
        if kind == "patch":

            def check(outcome: Outcome, exc: Any) -> None:
                if outcome == "ok":
                    self.allowed(key, lambda s: s is not None, "a patch succeeded")
                elif isinstance(exc, NotFoundError):
                    self.allowed(key, lambda s: s is None, "a patch found nothing")

            states = {(s[0] + 1, tag) for s in model.states if s is not None}
            return (lambda: self.nb.patch(ChaosItem, key, n=n, tag=tag)), tag, topic, states, check
        assert kind == "delete"

        def check(outcome: Outcome, exc: Any) -> None:
            if outcome == "ok":
                self.allowed(key, lambda s: s is not None, "a delete succeeded")
            elif isinstance(exc, NotFoundError):
                self.allowed(key, lambda s: s is None, "a delete found nothing")

        return (lambda: self.nb.delete(ChaosItem, key)), "", None, {None}, check

    def _settle(
        self,
        kind: str,
        key: str,
        tag: str,
        topic: str | None,
        states: set[State],
        check: Callable[[Outcome, Any], None],
        result: Any,
        exc: BaseException | None,
        how: str,
    ) -> None:
        outcome = _classify(exc)
        if self.env.server is None and isinstance(exc, BackendUnavailableError):
            self.history.violations.append(f"{how}{kind} of {key}: an embedded backend failed: {exc}")
        check(outcome, exc)
        obj = result if isinstance(result, dfdb.NbModel) else None
        if outcome == "ok" and kind != "delete":
            assert obj is not None
            topic = obj.topic
            if kind == "patch":
                self.allowed(key, lambda s: s is not None and s[0] + 1 == obj.version, "a patch wrote its version")
        self.history.record(
            f"{how}{kind}",
            key,
            tag,
            outcome,
            topic=topic,
            result=obj,
            unknown_states=states,
            detail=type(exc).__name__ if exc is not None else "",
        )
        if obj is not None:
            self.copies[key].append(obj)

    async def _write(self, kind: str, key: str, topic: str | None, n: int, *, stale: bool = False) -> None:
        call, tag, topic, states, check = self._prepare(kind, key, topic, n, stale)
        result: Any = None
        exc: BaseException | None = None
        try:
            result = await call()
        except (dfdb.DfdbError, TimeoutError) as e:
            exc = e
        self._settle(kind, key, tag, topic, states, check, result, exc, "stale " if stale else "")

    @rule(key=st.sampled_from(KEYS), topic=st.sampled_from([*TOPICS, None]), n=st.integers(0, 9))
    def create(self, key: str, topic: str | None, n: int) -> None:
        self.run(self._write("create", key, topic, n))

    @rule(key=st.sampled_from(KEYS), n=st.integers(0, 9))
    def update(self, key: str, n: int) -> None:
        self.run(self._read(key))
        if self.history.model(key).present():
            self.run(self._write("update", key, None, n))

    @rule(key=st.sampled_from(KEYS), n=st.integers(0, 9))
    def stale_update(self, key: str, n: int) -> None:
        """An update from an older copy: it must conflict (or be refused as not found)."""
        model = self.history.model(key)
        current = model.version()
        if current is None or not any(c.version < current for c in self.copies[key]):
            return
        self.run(self._write("update", key, None, n, stale=True))

    @rule(key=st.sampled_from(KEYS), n=st.integers(0, 9))
    def patch(self, key: str, n: int) -> None:
        self.run(self._write("patch", key, None, n))

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        self.run(self._write("delete", key, None, 0))

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True), topic=st.sampled_from(TOPICS))
    def create_many(self, keys: list[str], topic: str) -> None:
        self.run(self._create_many(keys, topic, None))

    async def _create_many(self, keys: list[str], topic: str, cancel_at: int | None) -> None:
        prepared = [self._prepare("create", key, topic, i) for i, key in enumerate(keys)]
        objs = [
            ChaosItem(id=key, topic=topic, n=i, tag=p[1]) for i, (key, p) in enumerate(zip(keys, prepared, strict=True))
        ]
        run = await run_stepped(self.nb.create_many(objs), cancel_at=cancel_at)
        if run.error is not None and not isinstance(run.error, dfdb.DfdbError | TimeoutError):
            raise run.error
        for i, (key, (_, tag, _, states, check)) in enumerate(zip(keys, prepared, strict=True)):
            if run.result is not None:
                item = run.result[i]
                exc = item if isinstance(item, BaseException) else None
                self._settle("create", key, tag, topic, states, check, None if exc else item, exc, "batch ")
            else:
                exc = run.error or asyncio.CancelledError()
                self._settle("create", key, tag, topic, states, check, None, exc, "batch ")
        if run.swallowed:
            self.history.violations.append(f"create_many cancelled at await point {cancel_at} went on: {run}")

    async def _read(self, key: str) -> None:
        try:
            obj = await self.nb.get(ChaosItem, key)
        except NotFoundError:
            self.history.observe(key, None, "get")
            return
        except (BackendUnavailableError, TimeoutError):
            return
        self.history.observe(key, state_of(obj), "get")
        self.copies[key].append(obj)

    @rule(key=st.sampled_from(KEYS))
    def read(self, key: str) -> None:
        self.run(self._read(key))

    # ------------------------------------------------------------ cancellations and deadlines
    @precondition(lambda self: self.env.family == "cancel")
    @rule(
        kind=st.sampled_from(["create", "update", "patch", "delete", "many"]),
        key=st.sampled_from(KEYS),
        topic=st.sampled_from(TOPICS),
        k=st.integers(1, 12),
    )
    def cancelled_write(self, kind: str, key: str, topic: str, k: int) -> None:
        if kind == "many":
            self.run(self._create_many([key, *(x for x in KEYS if x != key)][:3], topic, k))
            return
        if kind == "update":
            self.run(self._read(key))
        call, tag, topic2, states, check = self._prepare(kind, key, topic, k)
        run = self.run(run_stepped(call(), cancel_at=k))
        if run.swallowed:
            self.history.violations.append(f"{kind} of {key} cancelled at await point {k} went on: {run}")
        exc = asyncio.CancelledError() if run.cancelled else run.error
        self._settle(kind, key, tag, topic2, states, check, run.result, exc, f"cancelled@{k} ")

    @precondition(lambda self: self.env.family == "cancel")
    @rule(
        kind=st.sampled_from(["create", "update", "patch", "delete"]),
        key=st.sampled_from(KEYS),
        topic=st.sampled_from(TOPICS),
        deadline=st.sampled_from([0.0, 0.0002, 0.001, 0.005, 0.02]),
    )
    def write_with_deadline(self, kind: str, key: str, topic: str, deadline: float) -> None:
        if kind == "update":
            self.run(self._read(key))
        call, tag, topic2, states, check = self._prepare(kind, key, topic, 1)

        async def bounded() -> tuple[Any, BaseException | None]:
            try:
                async with asyncio.timeout(deadline):
                    return await call(), None
            except (dfdb.DfdbError, TimeoutError) as exc:
                return None, exc

        result, exc = self.run(bounded())
        self._settle(kind, key, tag, topic2, states, check, result, exc, f"deadline {deadline:g}s ")

    @precondition(lambda self: self.env.family == "cancel-topics")
    @rule(topic=st.sampled_from(TOPICS[1:]), k=st.integers(1, 8), add=st.booleans())
    def cancelled_topic_change(self, topic: str, k: int, add: bool) -> None:
        """add_topic / remove_topic cancelled at an await point, then done again (as a caller would)."""
        call = self.selective.add_topic(topic) if add else self.selective.remove_topic(topic)
        run = self.run(run_stepped(call, cancel_at=k))
        if run.swallowed:
            what = "add_topic" if add else "remove_topic"
            self.history.violations.append(f"{what}({topic}) cancelled at await point {k} went on: {run}")
        if run.error is not None and not isinstance(run.error, dfdb.DfdbError):
            raise run.error
        self.run(self.selective.add_topic(topic) if add else self.selective.remove_topic(topic))

    # ------------------------------------------------------------ corrupt records
    @precondition(lambda self: self.env.family == "corrupt")
    @rule(key=st.sampled_from(BAD), topic=st.sampled_from(["t0", None]))
    def write_corrupt(self, key: str, topic: str | None) -> None:
        async def go() -> None:
            with contextlib.suppress(NotFoundError):
                await self.nb.delete(ChaosItem, key)  # a topic is fixed for a key's life
            await corrupt(self.nb, ChaosItem, key, topic)
            with contextlib.suppress(CorruptObjectError):
                got = await self.nb.get(ChaosItem, key)
                self.history.violations.append(f"get of the corrupt {key} returned {got!r}")

        self.run(go())
        self.bad.add(key)

    @precondition(lambda self: self.env.family == "corrupt")
    @rule(key=st.sampled_from(BAD))
    def repair_corrupt(self, key: str) -> None:
        async def go() -> None:
            with contextlib.suppress(NotFoundError):
                await self.nb.delete(ChaosItem, key)
            with contextlib.suppress(NotFoundError):
                await self.nb.get(ChaosItem, key)
                self.history.violations.append(f"{key} is still there after its delete")

        self.run(go())
        self.bad.discard(key)

    # ------------------------------------------------------------ server faults
    @precondition(lambda self: self.env.family == "server")
    @rule()
    def restart_server(self) -> None:
        assert self.env.faults is not None
        self.run(self.env.faults.restart())

    @precondition(lambda self: self.env.family == "server")
    @rule(kind=st.sampled_from(["create", "update", "patch", "delete"]), key=st.sampled_from(KEYS))
    def write_while_paused(self, kind: str, key: str) -> None:
        faults = self.env.faults
        assert faults is not None
        if kind == "update":
            self.run(self._read(key))
        call, tag, topic, states, check = self._prepare(kind, key, "t1", 3)

        async def go() -> tuple[Any, BaseException | None]:
            faults.pause()
            try:
                async with asyncio.timeout(0.5):
                    return await call(), None
            except (dfdb.DfdbError, TimeoutError) as exc:
                return None, exc
            finally:
                faults.resume()

        result, exc = self.run(go())
        self._settle(kind, key, tag, topic, states, check, result, exc, "paused ")

    @precondition(lambda self: self.env.family == "server" and self.env.faults is not None and self.env.faults.can_drop)
    @rule()
    def drop_connections(self) -> None:
        assert self.env.faults is not None
        self.run(self.env.faults.drop_connections())

    # ------------------------------------------------------------ watchers
    @rule(
        which=st.integers(0, 1),
        timeout=st.sampled_from([0.0, 0.0001, 0.001, 0.01]),
        style=st.sampled_from(["wait_for", "timeout"]),
    )
    def read_stream(self, which: int, timeout: float, style: str) -> None:
        self.run(self._read_stream(self.watchers[which], timeout, style, 20))

    async def _read_stream(self, w: Watcher, wait: float, style: str, limit: int) -> None:
        if w.stream is None:
            try:
                await self._reopen(w)
            except BackendUnavailableError:
                return
        stream = w.stream
        assert stream is not None
        for _ in range(limit):
            try:
                if style == "wait_for":
                    ev = await asyncio.wait_for(anext(stream), wait)
                else:
                    async with asyncio.timeout(wait):
                        ev = await anext(stream)
            except TimeoutError:
                return
            except StopAsyncIteration:
                self.history.violations.append(f"{w.log.name}: the stream ended by itself")
                return
            except BackendUnavailableError:  # a stream that gave up: resume it from its cursor
                w.cursor = stream.cursor
                await stream.aclose()
                w.stream = None
                return
            await w.log.take(ev, self._relist)
            w.cursor = stream.cursor

    @rule(which=st.integers(0, 1))
    def resume_watch(self, which: int) -> None:
        """Close a watcher's stream and open a new one from its cursor."""
        w = self.watchers[which]

        async def go() -> None:
            if w.stream is not None:
                w.cursor = w.stream.cursor
                await w.stream.aclose()
                w.stream = None
            with contextlib.suppress(BackendUnavailableError):
                await self._reopen(w)

        self.run(go())

    # ------------------------------------------------------------ replicas
    @rule(topic=st.sampled_from(TOPICS[1:]))
    def add_topic(self, topic: str) -> None:
        self.run(self.selective.add_topic(topic))

    @rule(topic=st.sampled_from(TOPICS[1:]))
    def remove_topic(self, topic: str) -> None:
        self.run(self.selective.remove_topic(topic))

    @rule()
    def replicas_agree(self) -> None:
        """Both Replicas equal the database once they reach its latest revision."""
        self.run(self._replicas_agree())

    async def _database(self) -> tuple[dict[str, tuple[str | None, State]], int]:
        loop = asyncio.get_running_loop()
        wait = 60.0 if self.env.server is not None else 5.0
        deadline = loop.time() + wait
        while True:
            try:
                # a write that every scope holds (topic-less): its revision is the latest, and a
                # stream that follows the scope passes it even on a backend that only polls
                self.syncs.append(f"sync{len(self.syncs)}")
                marker = await self.nb.create(ChaosItem(id=self.syncs[-1], tag="sync"))
                items, _ = await self._relist()
                return {o.id: (o.topic, state_of(o)) for o in items}, revision_of(marker) or 0
            except BackendUnavailableError as exc:
                if loop.time() > deadline:
                    raise Unsettled(f"the backend did not come back within {wait:g}s: {exc}") from None

    async def _replicas_agree(self) -> None:
        db, revision = await self._database()
        for replica in (self.full, self.selective):
            try:
                await asyncio.wait_for(replica.wait_for(revision), 30 if self.env.server else 10)
            except (TimeoutError, StreamClosedError) as exc:
                self.history.violations.append(
                    f"{replica.mode} replica did not reach revision {revision}: {exc!r} ({replica.stats()})"
                )
                continue
            scope = None if replica.mode is SyncMode.FULL else {None, *replica.topics}
            want = {k: s for k, (t, s) in db.items() if scope is None or t in scope}
            held = {o.id: state_of(o) for o in replica.get_all(ChaosItem)}
            if held != want:
                diff = sorted(
                    f"{k}: replica {held.get(k)} database {want.get(k)}"
                    for k in set(held) | set(want)
                    if held.get(k) != want.get(k)
                )
                self.history.violations.append(
                    f"{replica.mode} replica (topics {sorted(replica.topics)}) at revision {revision} differs: "
                    + "; ".join(diff)
                )

    # ------------------------------------------------------------ checks
    @invariant()
    def no_violation(self) -> None:
        if self.history.violations:
            self.reported = True
            raise AssertionError("\n".join(self.history.violations))

    async def _final(self) -> None:
        if self.env.faults is not None:
            self.env.faults.resume()
        db, revision = await self._database()
        for key in KEYS:
            self.history.observe(key, db.get(key, (None, None))[1], "the final database")
        for key in self.bad:
            with contextlib.suppress(CorruptObjectError):
                await self.nb.get(ChaosItem, key)
                self.history.violations.append(f"the corrupt {key} reads as an object")
        await self._replicas_agree()
        for w in self.watchers:
            await self._drain(w, revision)
            scope = {k: s for k, (t, s) in db.items() if w.log.in_scope(t)}
            self.history.violations.extend(w.log.check(self.history, scope, ignore=[*BAD, *self.syncs]))
        for replica in (self.full, self.selective):
            held = {o.id for o in replica.get_all(ChaosItem)} & set(BAD)
            if held:
                self.history.violations.append(f"{replica.mode} replica holds corrupt objects: {sorted(held)}")

    async def _drain(self, w: Watcher, revision: int) -> None:
        loop = asyncio.get_running_loop()
        within = 30 if self.env.server else 10
        deadline = loop.time() + within
        while loop.time() < deadline:
            if w.stream is not None:
                w.log.position = max(w.log.position, parse_cursor(w.stream.cursor)[1])
                if w.log.position >= revision:
                    return
            await self._read_stream(w, 0.2, "timeout", 1000)
        self.history.violations.append(
            f"{w.log.name}: did not reach revision {revision} within {within}s (at {w.log.position})"
        )

    async def _close(self) -> None:
        for w in self.watchers:
            if w.stream is not None:
                await w.stream.aclose()
        await self.selective.aclose()
        await self.full.aclose()
        await self.nb.aclose()
        await asyncio.get_running_loop().shutdown_default_executor()  # the server faults' own thread
        leaks = await ResourceSnapshot.wait_clean(self.baseline, grace=5.0)  # gRPC's threads lag under load
        if leaks:
            self.history.violations.append("left behind after closing: " + "; ".join(leaks))

    def teardown(self) -> None:
        try:
            if not self.history.violations and not self.reported:
                self.run(self._final(), within=300)
        finally:
            try:
                self.run(self._close())
            finally:
                self.loop.close()
        if not self.reported and self.history.violations:
            raise AssertionError("\n".join(self.history.violations) + f"\noutcomes: {self.history.summary()}")


def _budget() -> tuple[int, int]:
    """(examples, steps per example)."""
    examples = int(os.environ.get("DFDB_CHAOS_EXAMPLES", "0"))
    if examples:
        return examples, int(os.environ.get("DFDB_CHAOS_STEPS", "40"))
    return (25, 40) if FULL else (8, 25)


def test_chaos(chaos_case: tuple[str, str], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    template, family = chaos_case
    known = (family, _url_id(template)) in KNOWN_BUGS
    kind = _server_kind(template)
    server = request.getfixturevalue(f"chaos_{kind}") if kind is not None else None
    env = Env(template, family, tmp_path, server)
    given = request.config.getoption("hypothesis_seed", default=None)
    test_id = request.node.callspec.id
    # the default suite is deterministic (one seed per case); nox -s chaos passes a fresh one
    seed = int(given) if given is not None else zlib.crc32(test_id.encode())
    examples, steps = _budget()
    machine = type("Chaos", (ChaosMachine,), {"env": env})
    factory = hypothesis_seed(seed)(lambda: machine())
    print(f"chaos {test_id}: seed {seed}; replay: pytest tests/test_chaos.py -k '{test_id}' --hypothesis-seed={seed}")
    try:
        run_state_machine_as_test(
            factory,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                print_blob=False,
                # shrinking takes minutes: only the long runs (and never a known failure) shrink
                phases=tuple(Phase) if FULL and SHRINK and not known else (Phase.explicit, Phase.generate),
            ),
        )
    except BaseException as exc:
        exc.add_note(f"chaos {test_id}: seed {seed}; replay with --hypothesis-seed={seed} -k '{test_id}'")
        raise
    if env.faults is not None:
        print(f"faults injected: {env.faults.kills} restarts, {env.faults.pauses} pauses, {env.faults.drops} drops")
