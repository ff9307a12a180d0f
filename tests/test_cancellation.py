"""Every public call cancelled at every await point it reaches.

Method: :func:`dfdb.testing.chaos.run_stepped` runs the call in a task of its own,
forwarding the coroutine's suspensions and counting them; at suspension ``k`` it
cancels that task, so ``CancelledError`` lands on exactly that await point. One
uncancelled run counts the call's await points ``N``; then the call runs once for each
``k`` in 1..N (plus one past the end, where it completes). After each run:

- the cancellation was not swallowed (a call asked to stop raises ``CancelledError``);
- a write happened once or not at all (read back: the old or the new state; on exact
  streams the change log holds at most one change of the key, exactly one if it landed);
- nothing is half-open: the next call of each kind works (a write, a read, a list,
  a stream, within a few seconds) and no task or thread is left behind;
- an event taken from a stream, or from ``Replica.events()``, arrives with the next read.

memory:// and sqlite run in the default suite; ``DFDB_CHAOS=1`` (``nox -s chaos``) runs
every URL of the ``dfdb_urls`` ini, servers and polling included.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

import dfdb
from dfdb import Action, NbApi, Replica, SyncMode, revision_of
from dfdb.drivers import Expect, PutRequest
from dfdb.drivers.memory import MemoryDriver
from dfdb.events import parse_cursor
from dfdb.testing.chaos import ChaosItem, Stepped, run_stepped, state_of
from dfdb.testing.leaks import LOOP_THREADS, ResourceSnapshot
from dfdb.testing.plugin import fill_url

DEFAULT_URLS = ["memory://{name}", "sqlite:///{tmp}/{name}.db"]
WITHIN = 10.0  # seconds any follow-up call may take
MAX_STEPS = int(os.environ.get("DFDB_CANCEL_STEPS", "60"))  # await points tried per call (then thinned out)

pytestmark = pytest.mark.timeout(600)


def _url_id(url: str) -> str:
    return url.split("?", 1)[0].split("://", 1)[0] + ("-poll" if "notifications=poll" in url else "")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cancel_url" in metafunc.fixturenames:
        config = metafunc.config
        urls = config.getoption("dfdb_url") or (
            config.getini("dfdb_urls") if os.environ.get("DFDB_CHAOS") else DEFAULT_URLS
        )
        params = []
        for url in urls:
            marks = [pytest.mark.xfail(strict=True, reason=r) for r in _known_bugs(metafunc.function.__name__, url)]
            params.append(pytest.param(url, id=_url_id(url), marks=marks))
        metafunc.parametrize("cancel_url", params)


KNOWN_BUGS: dict[tuple[str, str], str] = {}
"""(test, backend id) -> the bug that makes it fail today (an xfail that turns strict when fixed)."""


def _known_bugs(test: str, url: str) -> list[str]:
    reason = KNOWN_BUGS.get((test, _url_id(url)))
    return [reason] if reason else []


@pytest.fixture
def cancel_fresh_url(cancel_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return fill_url(cancel_url, tmp_path, request, prefix="c")


@pytest.fixture
async def cnb(cancel_fresh_url: str) -> AsyncIterator[NbApi]:
    before = ResourceSnapshot.take()
    before_kinds = _task_kinds(before)
    timeout = 2.0 if cancel_fresh_url.startswith(("memory:", "sqlite:")) else WITHIN
    async with dfdb.connect(cancel_fresh_url, timeout=timeout) as api:
        yield api
    leaks = [
        leak for leak in await _tasks_and_threads_left(before, before_kinds) if "_poll_wrapper" not in leak
    ]  # grpc's, global
    assert not leaks, f"left behind after closing the NbApi: {leaks}"


_tags = itertools.count()


def tag() -> str:
    return f"w{next(_tags)}"


def steps_to_try(n: int) -> list[int]:
    """1..n+1 (one past the end: the call completes), thinned beyond MAX_STEPS."""
    ks = list(range(1, n + 2))
    if len(ks) > MAX_STEPS:
        head = ks[: MAX_STEPS // 2]
        ks = head + ks[MAX_STEPS // 2 :: max(1, (len(ks) - len(head)) // (MAX_STEPS // 2))] + [n + 1]
    return sorted(set(ks))


async def sweep(
    nb: NbApi,
    make: Callable[[int], Awaitable[Callable[[], Coroutine[Any, Any, Any]]]],
    check: Callable[[int, Stepped[Any]], Awaitable[None]],
    *,
    tidy: Callable[[], Awaitable[None]] | None = None,
    cycles: bool = False,
) -> int:
    """Count the await points of the call built by ``make(0)``; then, for each ``k``, build it
    again with ``make(k)``, run it cancelled at ``k`` and ``check`` the aftermath. Returns N.

    ``cycles``: count event-loop iterations instead (for calls whose work runs in tasks
    they start, such as the batches)."""
    baseline = ResourceSnapshot.take()
    baseline_kinds = _task_kinds(baseline)
    first = await run_stepped((await make(0))())
    assert not first.cancelled and first.error is None, f"the uncancelled call failed: {first.error!r}"
    await check(0, first)
    if tidy is not None:
        await tidy()
    unit, total = ("loop iteration", first.cycles) if cycles else ("await point", first.steps)
    for k in steps_to_try(total):
        call = await make(k)
        run = await (run_stepped(call(), cancel_at_cycle=k) if cycles else run_stepped(call(), cancel_at=k))
        assert not run.swallowed, f"cancelled at {unit} {k} of {total}, the call went on: {run!r}"
        if run.error is not None:
            raise AssertionError(f"cancelled at {unit} {k}, the call raised {run.error!r}") from run.error
        try:
            await check(k, run)
        except (AssertionError, dfdb.DfdbError) as exc:
            raise AssertionError(f"cancelled at {unit} {k} of {total}: {exc}") from exc
        if tidy is not None:
            await tidy()
        await probe(nb, f"after a cancel at {unit} {k} of {total}")
        leaks = await _tasks_and_threads_left(baseline, baseline_kinds)
        assert not leaks, f"after a cancel at {unit} {k}: {leaks}"
    # client libraries keep pools: a connection dropped by a cancel may be replaced; a leak grows with k
    fds = ResourceSnapshot.take().fds - baseline.fds
    assert fds <= 4, f"{fds} more file descriptors open after {total} cancellations"
    return first.steps


def _task_kinds(snapshot: ResourceSnapshot) -> Counter[str]:
    """How many tasks of each kind (the qualified name of their coroutine) run in ``snapshot``;
    taken with the snapshot: a finished compiled coroutine (grpc's) has no name any more."""
    return Counter(getattr(t.get_coro(), "__qualname__", None) or repr(t.get_coro()) for t in snapshot.tasks)


async def _tasks_and_threads_left(baseline: ResourceSnapshot, before: Counter[str]) -> list[str]:
    """Kinds of task (by coroutine) or threads of which more run than at ``baseline`` (``before``:
    its task kinds, counted when it was taken), for 2 s on end.

    Counted by kind: a poller's per-read task or a client's per-command task is replaced
    all the time (a gRPC call's status task with the stream it belongs to), and is a leak
    only when their number grows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2
    while True:
        now = ResourceSnapshot.take()
        grown = _task_kinds(now) - before
        leaks = [f"{n} more task(s) running {kind}" for kind, n in grown.items()]
        leaks += [
            f"thread left running: {t.name}"
            for t in now.threads - baseline.threads
            # grpc's process-wide poller; the event loop's own worker threads (anyio.to_thread)
            if t.is_alive() and "_poll_wrapper" not in t.name and not t.name.startswith(LOOP_THREADS)
        ]
        if not leaks or loop.time() > deadline:
            return leaks
        await asyncio.sleep(0.01)


async def probe(nb: NbApi, where: str) -> None:
    """Every kind of call still works, promptly: write, read, list, update, delete."""
    try:
        async with asyncio.timeout(WITHIN):
            key = "probe-" + uuid.uuid4().hex[:8]
            obj = await nb.create(ChaosItem(id=key, topic="probe", tag=tag()))
            assert (await nb.get(ChaosItem, key)).tag == obj.tag
            await nb.update(obj.model_copy(update={"n": 1, "tag": tag()}))
            assert key in {o.id for o in await nb.get_all(ChaosItem, topic="probe")}
            await nb.delete(ChaosItem, key)
            await nb.allocate_unique_key(ChaosItem)
    except TimeoutError:
        raise AssertionError(f"{where}: a follow-up call did not finish within {WITHIN}s") from None
    except dfdb.DfdbError as exc:
        raise AssertionError(f"{where}: a follow-up call failed: {exc!r}") from exc


async def changes_of(nb: NbApi, since: str, keys: set[str]) -> list[dfdb.ChangeEvent]:
    """The changes of ``keys`` logged after ``since`` (exact streams): read up to a marker write
    (and, on a stream not ordered across keys, until its cursor passes the marker)."""
    marker = "mark-" + uuid.uuid4().hex[:8]
    async with nb.watch(ChaosItem, since=since) as stream:
        written = await nb.create(ChaosItem(id=marker, topic="probe"))
        seen = await read_past(stream, revision_of(written) or 0)
    await nb.delete(ChaosItem, marker)
    return [ev for ev in seen if ev.id in keys]


async def read_past(stream: dfdb.ChangeStream, revision: int) -> list[dfdb.ChangeEvent]:
    """Read ``stream`` until every change up to ``revision`` was delivered; the events read."""
    seen: list[dfdb.ChangeEvent] = []
    async with asyncio.timeout(WITHIN):
        while True:
            if any(ev.revision >= revision for ev in seen) and parse_cursor(stream.cursor)[1] >= revision:
                return seen
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    ev = await anext(stream)
                    assert ev.action != Action.RESYNC, "the change log lost history in a short test"
                    seen.append(ev)


async def head(nb: NbApi) -> str:
    return (await nb.list(ChaosItem, topic="probe")).cursor


async def check_write(
    nb: NbApi, k: int, run: Stepped[Any], key: str, before: object, after: object, since: str
) -> None:
    """The key holds ``before`` or ``after`` (``after`` when the call completed); on exact
    streams the log holds one change of it when it changed, none when it did not. The log
    is read first: a cancelled request may still reach the server a moment later."""
    changes = await changes_of(nb, since, {key}) if nb.exact else None
    now = state_of(await _get_or_none(nb, key))
    assert now in (before, after), f"cancelled at {k}: {key} holds {now}, neither {before} nor {after}"
    if not run.cancelled:
        assert now == after, f"the call completed but {key} holds {now}, not {after}"
    if changes is not None:
        expected = 0 if now == before else 1
        assert len(changes) == expected, (
            f"cancelled at {k}: {len(changes)} logged change(s) of {key} ({[(e.action, e.revision) for e in changes]}) "
            f"for state {now}"
        )


async def _get_or_none(nb: NbApi, key: str) -> dfdb.NbModel | None:
    with contextlib.suppress(dfdb.NotFoundError):
        return await nb.get(ChaosItem, key)
    return None


# ---------------------------------------------------------------- NbApi writes
async def test_create(cnb: NbApi) -> None:
    keys: dict[int, tuple[str, str, str]] = {}

    async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
        key, t = f"c{k}-{uuid.uuid4().hex[:6]}", tag()
        keys[k] = (key, t, await head(cnb))
        return lambda: cnb.create(ChaosItem(id=key, topic="t0", tag=t))

    async def check(k: int, run: Stepped[Any]) -> None:
        key, t, since = keys[k]
        await check_write(cnb, k, run, key, None, (1, t), since)
        if state_of(await _get_or_none(cnb, key)) is None:  # not created: creating it now works
            await cnb.create(ChaosItem(id=key, topic="t0", tag=tag()))
        else:
            with pytest.raises(dfdb.AlreadyExistsError):
                await cnb.create(ChaosItem(id=key, topic="t0", tag=tag()))

    await sweep(cnb, make, check)


async def _updater(nb: NbApi, how: str) -> Any:
    keys: dict[int, tuple[str, tuple[int, str], str, str]] = {}

    async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
        key = f"u{k}-{uuid.uuid4().hex[:6]}"
        obj = await nb.create(ChaosItem(id=key, topic="t0", tag=tag()))
        t = tag()
        keys[k] = (key, (1, obj.tag), t, await head(nb))
        if how == "update":
            return lambda: nb.update(obj.model_copy(update={"n": 5, "tag": t}))
        if how == "patch":
            return lambda: nb.patch(ChaosItem, key, n=5, tag=t)
        return lambda: nb.delete(ChaosItem, key)

    async def check(k: int, run: Stepped[Any]) -> None:
        key, before, t, since = keys[k]
        after = None if how == "delete" else (2, t)
        await check_write(nb, k, run, key, before, after, since)
        current = await _get_or_none(nb, key)
        if current is not None:  # the next write of the key works from what is stored
            await nb.update(current.model_copy(update={"n": 9, "tag": tag()}))
            if how == "update" and state_of(current) == after:  # the stale copy conflicts
                with pytest.raises(dfdb.ConflictError):
                    await nb.update(ChaosItem(id=key, topic="t0", version=1, tag=tag()))

    await sweep(nb, make, check)


async def test_update(cnb: NbApi) -> None:
    await _updater(cnb, "update")


async def test_patch(cnb: NbApi) -> None:
    await _updater(cnb, "patch")


async def test_delete(cnb: NbApi) -> None:
    await _updater(cnb, "delete")


async def test_create_many(cnb: NbApi) -> None:
    batches: dict[int, tuple[list[tuple[str, str]], str]] = {}

    async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
        items = [(f"m{k}-{i}-{uuid.uuid4().hex[:6]}", tag()) for i in range(3)]
        batches[k] = (items, await head(cnb))
        return lambda: cnb.create_many([ChaosItem(id=key, topic="t0", tag=t) for key, t in items])

    async def check(k: int, run: Stepped[Any]) -> None:
        items, since = batches[k]
        for key, t in items:
            await check_write(cnb, k, run, key, None, (1, t), since)
        if not run.cancelled:
            assert [state_of(r) for r in run.result] == [(1, t) for _, t in items]

    await sweep(cnb, make, check)
    await sweep(cnb, make, check, cycles=True)


async def test_update_many(cnb: NbApi) -> None:
    batches: dict[int, tuple[list[tuple[str, str, str]], str]] = {}

    async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
        fresh = [ChaosItem(id=f"um{k}-{i}-{uuid.uuid4().hex[:6]}", topic="t0", tag=tag()) for i in range(3)]
        objs = [await cnb.create(o) for o in fresh]
        items = [(o.id, o.tag, tag()) for o in objs]
        batches[k] = (items, await head(cnb))
        return lambda: cnb.update_many(
            [o.model_copy(update={"tag": t}) for o, (_, _, t) in zip(objs, items, strict=True)]
        )

    async def check(k: int, run: Stepped[Any]) -> None:
        items, since = batches[k]
        for key, old, t in items:
            await check_write(cnb, k, run, key, (1, old), (2, t), since)

    await sweep(cnb, make, check)
    await sweep(cnb, make, check, cycles=True)


class InFlightDriver(MemoryDriver):
    """A memory driver that writes as a server does: a write sent is applied a moment later,
    whether or not its caller still waits for the reply."""

    def __init__(self) -> None:
        super().__init__(dfdb.DatabaseURL.parse("memory://"))
        self.sent: set[str] = set()
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.sending = asyncio.Event()

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        (outcome,) = await self.put_many([PutRequest(table, id, topic, value, expect)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def put_many(self, writes: Sequence[PutRequest]) -> list[int | Exception]:
        async def apply() -> list[int | Exception]:
            await asyncio.sleep(0.05)  # on the wire
            outcomes: list[int | Exception] = []
            for w in writes:
                try:
                    outcomes.append(await MemoryDriver.put(self, w.table, w.id, w.topic, w.value, w.expect))
                except dfdb.DfdbError as exc:
                    outcomes.append(exc)
            return outcomes

        task = asyncio.get_running_loop().create_task(apply())
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        self.sent.update(w.id for w in writes)
        self.sending.set()
        return await asyncio.shield(task)


@pytest.mark.parametrize("how", ["create_many", "update_many"])
async def test_a_sent_batch_lands_before_its_cancellation_is_raised(how: str) -> None:
    driver = InFlightDriver()
    async with NbApi(driver) as nb:
        objs = [ChaosItem(id=f"k{i}", topic="t0", tag="old") for i in range(3)]
        if how == "update_many":
            objs = [(await nb.create(o)).model_copy(update={"tag": "new"}) for o in objs]
        driver.sent.clear()
        driver.sending.clear()
        call = asyncio.create_task(getattr(nb, how)(objs))
        await asyncio.wait_for(driver.sending.wait(), WITHIN)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert not driver.in_flight, "the caller was told it was cancelled while its writes were still in flight"
        landed = {o.id for o in await nb.get_all(ChaosItem) if o.version == (1 if how == "create_many" else 2)}
        assert landed == driver.sent


# ---------------------------------------------------------------- NbApi reads
async def test_reads(cnb: NbApi) -> None:
    await cnb.create(ChaosItem(id="r1", topic="t0", tag="x"))
    await cnb.create(ChaosItem(id="r2", topic="t1", tag="y"))
    calls: list[Callable[[], Coroutine[Any, Any, Any]]] = [
        lambda: cnb.get(ChaosItem, "r1"),
        lambda: cnb.list(ChaosItem),
        lambda: cnb.list(ChaosItem, topic="t1"),
        lambda: cnb.get_all(ChaosItem),
    ]
    for call in calls:

        async def make(k: int, call: Callable[[], Coroutine[Any, Any, Any]] = call) -> Any:
            return call

        async def check(k: int, run: Stepped[Any]) -> None:
            assert [o.id for o in await cnb.get_all(ChaosItem, topic="t0")] == ["r1"]

        await sweep(cnb, make, check)


async def test_allocate_unique_key(cnb: NbApi) -> None:
    seen: list[int] = []

    async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
        return lambda: cnb.allocate_unique_key(ChaosItem)

    async def check(k: int, run: Stepped[Any]) -> None:
        if not run.cancelled:
            seen.append(run.result)
        seen.append(await cnb.allocate_unique_key(ChaosItem))
        assert len(seen) == len(set(seen)), f"a key was returned twice: {seen}"

    await sweep(cnb, make, check)


# ---------------------------------------------------------------- change streams
async def test_stream_open(cnb: NbApi) -> None:
    streams: dict[int, dfdb.ChangeStream] = {}

    async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
        streams[k] = stream = cnb.watch(ChaosItem, topics={"t0"})
        return stream.open

    async def check(k: int, run: Stepped[Any]) -> None:
        stream = streams.pop(k)
        if run.cancelled:
            with pytest.raises((StopAsyncIteration, dfdb.StreamClosedError)):
                await asyncio.wait_for(anext(stream), 1)
        await stream.aclose()
        async with cnb.watch(ChaosItem, topics={"t0"}) as fresh:  # the next stream works
            obj = await cnb.create(ChaosItem(id=f"so{k}-{uuid.uuid4().hex[:6]}", topic="t0", tag=tag()))
            ev = await asyncio.wait_for(anext(fresh), WITHIN)
            assert (ev.id, ev.revision) == (obj.id, revision_of(obj))

    await sweep(cnb, make, check)


async def test_stream_anext(cnb: NbApi) -> None:
    async with cnb.watch(ChaosItem, topics={"t0"}) as stream:
        first = await cnb.create(ChaosItem(id="sa-first", topic="t0", tag=tag()))
        assert (
            await asyncio.wait_for(anext(stream), WITHIN)
        ).id == first.id  # a reader task starts with the first read
        written: dict[int, dfdb.NbModel] = {}

        async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
            written[k] = await cnb.create(ChaosItem(id=f"sa{k}-{uuid.uuid4().hex[:6]}", topic="t0", tag=tag()))
            return lambda: anext(stream)

        async def check(k: int, run: Stepped[Any]) -> None:
            obj = written.pop(k)
            if run.cancelled:  # the event taken, or not yet taken, comes with the next read
                ev = await asyncio.wait_for(anext(stream), WITHIN)
            else:
                ev = run.result
            assert (ev.action, ev.id, state_of(ev.obj)) == (Action.CREATE, obj.id, state_of(obj)), (
                f"cancelled at {k}: the next read gave {ev.action} {ev.id}, not the create of {obj.id}"
            )

        await sweep(cnb, make, check)


async def test_stream_add_topics(cnb: NbApi) -> None:
    state: dict[int, tuple[dfdb.ChangeStream, str, dfdb.NbModel]] = {}

    async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
        stream = cnb.watch(ChaosItem, topics={"t0"})
        await stream.open()
        cursor = stream.cursor
        other = await cnb.create(ChaosItem(id=f"at{k}-{uuid.uuid4().hex[:6]}", topic=f"x{k}", tag=tag()))
        state[k] = (stream, cursor, other)
        return lambda: stream.add_topics({f"x{k}"}, since=cursor)

    async def check(k: int, run: Stepped[Any]) -> None:
        stream, cursor, other = state.pop(k)
        try:
            await asyncio.wait_for(stream.add_topics({f"x{k}"}, since=cursor), WITHIN)
            marker = await cnb.create(ChaosItem(id=f"atm{k}-{uuid.uuid4().hex[:6]}", topic="t0", tag=tag()))
            seen = [(ev.action, ev.id) for ev in await read_past(stream, revision_of(marker) or 0)]
            got = [s for s in seen if s[1] == other.id]
            assert got == [(Action.CREATE, other.id)], (
                f"cancelled at {k}: the object of the added topic arrived {len(got)} times: {seen}"
            )
            assert stream.reconnects == 0, f"cancelled at {k}: the stream reconnected {stream.reconnects} times"
        finally:
            await stream.aclose()

    await sweep(cnb, make, check)


# ---------------------------------------------------------------- replicas
async def _settled(replica: Replica, nb: NbApi) -> None:
    revision = parse_cursor((await nb.list(ChaosItem)).cursor)[1]
    await asyncio.wait_for(replica.wait_for(revision), WITHIN)


def _held(replica: Replica) -> dict[str, Any]:
    return {o.id: state_of(o) for o in replica.get_all(ChaosItem)}


async def _truth(nb: NbApi, topics: set[str | None] | None = None) -> dict[str, Any]:
    return {o.id: state_of(o) for o in await nb.get_all(ChaosItem) if topics is None or o.topic in topics}


async def test_replica_open(cnb: NbApi) -> None:
    await cnb.create(ChaosItem(id="ro", topic="t0", tag="a"))
    replicas: dict[int, Replica] = {}

    async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
        replicas[k] = replica = Replica(cnb, [ChaosItem])
        return replica.__aenter__

    async def check(k: int, run: Stepped[Any]) -> None:
        replica = replicas.pop(k)
        await replica.aclose()
        async with Replica(cnb, [ChaosItem]) as fresh:
            await asyncio.wait_for(fresh.wait_synced(), WITHIN)
            obj = await cnb.create(ChaosItem(id=f"ro{k}-{uuid.uuid4().hex[:6]}", topic="t0", tag=tag()))
            await asyncio.wait_for(fresh.wait_for(revision_of(obj) or 0), WITHIN)
            assert _held(fresh) == await _truth(cnb)

    await sweep(cnb, make, check)


@contextlib.asynccontextmanager
async def _replica(nb: NbApi, **kwargs: Any) -> AsyncIterator[Replica]:
    async with Replica(nb, [ChaosItem], **kwargs) as replica:
        await asyncio.wait_for(replica.wait_synced(), WITHIN)
        yield replica


async def test_replica_wait_synced_and_wait_for(cnb: NbApi) -> None:
    async with _replica(cnb) as replica:
        written: dict[int, dfdb.NbModel] = {}

        async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
            obj = await cnb.create(ChaosItem(id=f"wf{k}-{uuid.uuid4().hex[:6]}", topic="t0", tag=tag()))
            written[k] = obj

            async def both() -> None:
                await replica.wait_synced()
                await replica.wait_for(revision_of(obj) or 0)

            return both

        async def check(k: int, run: Stepped[Any]) -> None:
            obj = written.pop(k)
            await asyncio.wait_for(replica.wait_synced(), WITHIN)
            await asyncio.wait_for(replica.wait_for(revision_of(obj) or 0), WITHIN)
            assert replica.get(ChaosItem, obj.id) == obj

        await sweep(cnb, make, check)


async def test_replica_add_topic(cnb: NbApi) -> None:
    async with _replica(cnb, mode=SyncMode.SELECTIVE, topics={"t0"}) as replica:

        async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
            await cnb.create(ChaosItem(id=f"ad{k}-{uuid.uuid4().hex[:6]}", topic=f"a{k}", tag=tag()))
            return lambda: replica.add_topic(f"a{k}")

        async def check(k: int, run: Stepped[Any]) -> None:
            await asyncio.wait_for(replica.add_topic(f"a{k}"), WITHIN)
            later = await cnb.create(ChaosItem(id=f"adl{k}-{uuid.uuid4().hex[:6]}", topic=f"a{k}", tag=tag()))
            await asyncio.wait_for(replica.wait_for(revision_of(later) or 0), WITHIN)
            await _settled(replica, cnb)
            assert _held(replica) == await _truth(cnb, {None, *replica.topics}), f"cancelled at {k}"

        await sweep(cnb, make, check)


async def test_replica_remove_topic(cnb: NbApi) -> None:
    async with _replica(cnb, mode=SyncMode.SELECTIVE, topics={"t0"}) as replica:

        async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
            await cnb.create(ChaosItem(id=f"rm{k}-{uuid.uuid4().hex[:6]}", topic=f"r{k}", tag=tag()))
            await replica.add_topic(f"r{k}")
            return lambda: replica.remove_topic(f"r{k}")

        async def check(k: int, run: Stepped[Any]) -> None:
            await asyncio.wait_for(replica.remove_topic(f"r{k}"), WITHIN)
            await cnb.create(ChaosItem(id=f"rml{k}-{uuid.uuid4().hex[:6]}", topic=f"r{k}", tag=tag()))
            mark = await cnb.create(ChaosItem(id=f"rmm{k}-{uuid.uuid4().hex[:6]}", topic="t0", tag=tag()))
            await asyncio.wait_for(replica.wait_for(revision_of(mark) or 0), WITHIN)
            await _settled(replica, cnb)
            assert _held(replica) == await _truth(cnb, {None, *replica.topics}), f"cancelled at {k}"

        await sweep(cnb, make, check)


async def test_replica_fetch(cnb: NbApi) -> None:
    async with _replica(cnb, mode=SyncMode.REACTIVE) as replica:
        keys: dict[int, str] = {}

        async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
            obj = await cnb.create(ChaosItem(id=f"f{k}-{uuid.uuid4().hex[:6]}", topic=f"f{k}", tag=tag()))
            keys[k] = obj.id
            return lambda: replica.fetch(ChaosItem, obj.id)

        async def check(k: int, run: Stepped[Any]) -> None:
            key = keys.pop(k)
            fetched = await asyncio.wait_for(replica.fetch(ChaosItem, key), WITHIN)
            assert fetched is not None and fetched.id == key
            newer = await cnb.update(fetched.model_copy(update={"tag": tag()}))  # kept fresh afterwards
            await asyncio.wait_for(replica.wait_for(revision_of(newer) or 0), WITHIN)
            assert replica.get(ChaosItem, key) == newer, f"cancelled at {k}: the fetched object is not followed"

        await sweep(cnb, make, check)


async def test_replica_events_anext(cnb: NbApi) -> None:
    async with _replica(cnb) as replica:
        events = replica.events()
        written: dict[int, dfdb.NbModel] = {}
        try:

            async def make(k: int) -> Callable[[], Coroutine[Any, Any, Any]]:
                written[k] = await cnb.create(ChaosItem(id=f"ev{k}-{uuid.uuid4().hex[:6]}", topic="t0", tag=tag()))
                return lambda: anext(events)

            async def check(k: int, run: Stepped[Any]) -> None:
                obj = written.pop(k)
                ev = await asyncio.wait_for(anext(events), WITHIN) if run.cancelled else run.result
                if ev.id != obj.id:  # probe objects of the previous round come first
                    async with asyncio.timeout(WITHIN):
                        while ev.id != obj.id:
                            assert ev.id.startswith(("probe-", "mark-")), f"cancelled at {k}: unexpected {ev}"
                            ev = await anext(events)
                assert (ev.action, state_of(ev.new)) == (Action.CREATE, state_of(obj)), f"cancelled at {k}: {ev}"

            await sweep(cnb, make, check)
        finally:
            await events.aclose()
