"""NbApi behaviour beyond the conformance suite: retries, errors, registry, streams."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Collection, Sequence
from typing import ClassVar

import pytest

import dfdb
from dfdb.codec import decode
from dfdb.drivers import Driver, Entry, EventSource, Expect, Listing, RawEvent, register_driver
from dfdb.drivers.base import PutRequest
from dfdb.drivers.memory import MemoryDriver
from dfdb.errors import BackendUnavailableError
from dfdb.events import ChangeStream, SourceOpener
from dfdb.url import DatabaseURL


class Thing(dfdb.NbModel, table="test_nb_thing"):
    n: int = 0


class DownDriver(MemoryDriver):
    """A backend that never answers."""

    async def open(self) -> None:
        raise BackendUnavailableError(f"cannot connect to {self.url}")


class BlipDriver(MemoryDriver):
    """Each write is applied, then its reply is lost; another writer sneaks in when asked."""

    interfere = False

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        await super().put(table, id, topic, value, expect)
        if self.interfere:
            self.interfere = False
            await super().put(table, id, topic, value.replace(b'"_w":"', b'"_w":"x'), dfdb.drivers.ANY)
        raise BackendUnavailableError("connection reset")


register_driver("test-down", DownDriver)
register_driver("test-blip", BlipDriver)


async def test_unreachable_server_is_a_clear_error_within_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(dfdb.BackendUnavailableError, match="cannot connect") as info:
        async with dfdb.connect("test-down://u:pw@unreachable-db", timeout=0.3):
            pass
    assert loop.time() - started < 3
    assert isinstance(info.value, ConnectionError)
    assert "pw" not in str(info.value)


async def test_lost_reply_on_create_is_recognised_as_our_own_write() -> None:
    async with dfdb.connect("faulty://?fault=lose_reply") as nb:
        created = await nb.create(Thing(id="a", topic="t"))
        assert created.version == 1
        updated = await nb.update(created.model_copy(update={"n": 5}))
        assert (updated.version, updated.n) == (2, 5)
        assert (await nb.get(Thing, "a")).n == 5


async def test_lost_reply_with_interference_is_outcome_unknown() -> None:
    async with dfdb.connect("test-blip://", timeout=1) as nb:
        driver = nb.driver
        assert isinstance(driver, BlipDriver)
        driver.interfere = True
        with pytest.raises(dfdb.OutcomeUnknownError) as info:
            await nb.create(Thing(id="a", topic="t"))
        assert isinstance(info.value, dfdb.BackendUnavailableError)


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(dfdb.UnknownDriverError, match="memory") as info:
        dfdb.connect("nosuchdb://x")
    assert isinstance(info.value, ValueError)


def test_missing_client_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from dfdb import drivers

    monkeypatch.setitem(drivers._BUILTIN, "fakedb", ("dfdb_no_such_client_module:Driver", "fakedb"))
    with pytest.raises(dfdb.MissingDependencyError, match=r"pip install 'dfdb\[fakedb\]'"):
        dfdb.connect("fakedb://x")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("memory://?notifications=sometimes", "notifications"),
        ("memory://?poll_interval=0", "poll_interval=0 is out of range: it must be above 0"),
        ("memory://?timeout=abc", "timeout"),
        ("memory://?history=0", "history"),
        ("memory://?bogus=1", "bogus"),
        ("memory://host:123", "store name"),
    ],
)
def test_bad_options_are_configuration_errors(url: str, match: str) -> None:
    with pytest.raises(dfdb.ConfigurationError, match=match):
        dfdb.connect(url)


async def test_named_memory_stores_are_shared_while_open() -> None:
    async with dfdb.connect("memory://shared-one") as a, dfdb.connect("memory://shared-one") as b:
        await a.create(Thing(id="x"))
        assert (await b.get(Thing, "x")).id == "x"
        async with dfdb.connect("memory://") as private:
            assert await private.get_all(Thing) == []
    async with dfdb.connect("memory://shared-one") as c:
        assert await c.get_all(Thing) == []  # the last user closed it


async def test_bounded_history_yields_resync() -> None:
    async with dfdb.connect("memory://?history=10") as nb:
        async with nb.watch(Thing) as stream:
            await nb.create(Thing(id="first"))
            await anext(stream)
            cursor = stream.cursor
        for i in range(30):
            await nb.create(Thing(id=f"t{i}"))
        async with nb.watch(Thing, since=cursor) as resumed:
            ev = await anext(resumed)
            assert ev.action == dfdb.Action.RESYNC


class _ScriptedSource(EventSource):
    def __init__(self, events: list[RawEvent]) -> None:
        self.events = events
        self.closed = False

    async def __anext__(self) -> RawEvent:
        if not self.events:
            raise StopAsyncIteration
        return self.events.pop(0)

    @property
    def position(self) -> int:
        return 0

    async def aclose(self) -> None:
        self.closed = True


class _ScriptedOpener(SourceOpener):
    def __init__(self, source: EventSource) -> None:
        self.source = source

    async def identity(self) -> str:
        return "id"

    async def open(
        self, tables: Collection[str], topics: frozenset[str | None] | None, since: int | None
    ) -> EventSource:
        return self.source

    def decode(
        self, model: type[dfdb.NbModel], id: str, topic: str | None, value: bytes, revision: int
    ) -> dfdb.NbModel:
        return decode(model, id, topic, value, revision)


async def test_stream_drops_duplicates_and_resyncs_older_revisions() -> None:
    def value(n: int) -> bytes:
        return Thing(id="a", version=n).model_dump_json().encode()

    raw = [
        RawEvent("create", "test_nb_thing", "a", None, value(1), 1),
        RawEvent("create", "test_nb_thing", "a", None, value(1), 1),
        RawEvent("update", "test_nb_thing", "a", None, value(2), 3),
        RawEvent("update", "test_nb_thing", "a", None, value(1), 2),
        RawEvent("update", "other_table", "a", None, b"{}", 4),
    ]
    source = _ScriptedSource(raw)
    stream = ChangeStream({"test_nb_thing": Thing}, None, ("id", 0), _ScriptedOpener(source))
    async with stream:
        got = [ev async for ev in stream]
    # the repeat of revision 1 is a duplicate; revision 2 after 3 is out of order: a RESYNC
    assert [(ev.action, ev.revision) for ev in got] == [("create", 1), ("update", 3), ("resync", 2)]
    assert stream.duplicates == 1
    assert stream.out_of_order == 1
    assert stream.cursor == "id@4"
    assert source.closed


async def test_stream_turns_an_unknown_action_into_a_resync_of_its_table() -> None:
    value = Thing(id="a", version=1).model_dump_json().encode()
    raw = [
        RawEvent("frobnicate", "test_nb_thing", "x", None, b"{}", 1),  # type: ignore[arg-type]
        RawEvent("create", "test_nb_thing", "a", None, value, 2),
    ]
    stream = ChangeStream({"test_nb_thing": Thing}, None, ("id", 0), _ScriptedOpener(_ScriptedSource(raw)))
    async with stream:
        got = [ev async for ev in stream]
    assert [(ev.action, ev.model, ev.id) for ev in got] == [("resync", Thing, ""), ("create", Thing, "a")]
    assert stream.records_malformed == 1


async def test_iterating_a_stream_that_was_not_entered_is_an_error() -> None:
    async with dfdb.connect("memory://") as nb:
        stream = nb.watch(Thing)
        with pytest.raises(dfdb.StreamClosedError, match="async with"):
            await anext(stream)


async def test_unclosed_api_warns() -> None:
    nb = await dfdb.connect("memory://")
    assert isinstance(nb, dfdb.NbApi)
    with pytest.warns(ResourceWarning, match="unclosed dfdb NbApi"):
        del nb
        gc.collect()
        gc.collect()


async def test_cancelling_a_call_leaves_nothing_behind() -> None:
    async with dfdb.connect("memory://?notifications=poll&poll_interval=0.01") as nb:
        async with nb.watch(Thing) as stream:
            waiter = asyncio.create_task(anext(stream))
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await nb.create(Thing(id="after-cancel"))
            ev = await asyncio.wait_for(anext(stream), 5)
            assert ev.id == "after-cancel"


async def test_a_polled_stream_narrowed_goes_on_with_its_new_subscription_at_once() -> None:
    """A read waiting for a snapshot poller's next round (an interval away) while the stream
    is narrowed goes on with the new subscription at once: here its RESYNC (a snapshot
    cannot tell what changed since the cursor)."""
    async with dfdb.connect("memory://?notifications=poll&poll_interval=60") as nb:
        async with nb.watch(Thing, topics={"a", "b"}) as stream:
            waiter = asyncio.create_task(anext(stream))
            await asyncio.sleep(0.05)  # the read waits for the next round
            await nb.create(Thing(id="x", topic="a"))
            await stream.remove_topics({"b"})
            ev = await asyncio.wait_for(waiter, 5)
            assert ev.action == dfdb.Action.RESYNC


class NoStreamDriver(MemoryDriver):
    """A driver with neither a native stream nor a change log: NbApi polls it."""

    capabilities = dfdb.drivers.Capability.NONE

    async def watch(
        self, tables: Collection[str], topics: Collection[str | None] | None = None, since: int | None = None
    ) -> EventSource:
        raise AssertionError("must not be called")


register_driver("test-nostream", NoStreamDriver)


async def test_drivers_without_streams_are_polled() -> None:
    async with dfdb.connect("test-nostream://", poll_interval=0.01) as nb:
        assert not nb.exact
        async with nb.watch(Thing) as stream:
            await nb.create(Thing(id="p"))
            ev = await asyncio.wait_for(anext(stream), 5)
            assert (ev.action, ev.id) == (dfdb.Action.CREATE, "p")
            await nb.delete(Thing, "p")
            ev = await asyncio.wait_for(anext(stream), 5)
            assert (ev.action, ev.id, ev.topic) == (dfdb.Action.DELETE, "p", None)
    with pytest.raises(dfdb.ConfigurationError, match="native"):
        dfdb.connect("test-nostream://", notifications="native")


def test_driver_contract_is_abstract() -> None:
    with pytest.raises(TypeError):
        Driver(DatabaseURL.parse("x://"))  # type: ignore[abstract]
    assert Entry("t", "i", None, b"", 1).revision == 1
    assert Listing([], 0).entries == []


class CountingDriver(MemoryDriver):
    """Counts the driver calls of the write paths."""

    calls: ClassVar[list[tuple[str, int]]] = []
    batching = False

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        if not self.batching:
            self.calls.append(("put", 1))
        return await super().put(table, id, topic, value, expect)

    async def put_many(self, writes: Sequence[PutRequest]) -> list[int | Exception]:
        self.calls.append(("put_many", len(writes)))
        self.batching = True
        try:
            return await super().put_many(writes)
        finally:
            self.batching = False


register_driver("test-counting", CountingDriver)


async def test_update_many_sends_the_objects_it_read_as_one_batch() -> None:
    async with dfdb.connect("test-counting://update-many") as nb:
        a, b, c, d = await nb.create_many([Thing(id=k, topic="t") for k in "abcd"])
        assert isinstance(a, Thing) and isinstance(b, Thing) and isinstance(c, Thing) and isinstance(d, Thing)
        await nb.update(b.model_copy(update={"n": 1}))  # b is stale from here on
        CountingDriver.calls.clear()
        out = await nb.update_many(
            [
                a.model_copy(update={"n": 2}),
                b.model_copy(update={"n": 3}),
                Thing(id="c", topic="t", version=1, n=4),  # built by hand: read first, then written alone
                d.model_copy(update={"topic": "other"}),
            ]
        )
        assert CountingDriver.calls == [("put_many", 2), ("put", 1)]
        assert isinstance(out[0], Thing) and (out[0].version, out[0].n) == (2, 2)
        assert isinstance(out[1], dfdb.ConflictError)
        assert isinstance(out[2], Thing) and (out[2].version, out[2].n) == (2, 4)
        assert isinstance(out[3], ValueError) and "topic is fixed" in str(out[3])
        assert dfdb.revision_of(out[0]) is not None
        again = await nb.update(out[0].model_copy(update={"n": 5}))  # the origin it got is usable
        assert again.version == 3
