"""The NbApi boundary: nothing invalid is stored, corrupt values stay repairable, sizes,
timeouts and conflicts are handled where the user can act on them."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import dfdb
from dfdb.drivers import ANY, Expect, register_driver
from dfdb.drivers.memory import MemoryDriver
from dfdb.models import LogicalPort, LogicalSwitch
from dfdb.nbmodel import validate_key


class Counter(dfdb.NbModel, table="test_boundary_counter"):
    n: int = 0


class Gauge(dfdb.NbModel, table="test_boundary_gauge"):
    ratio: float | None = None
    extra: Any = None


class LenientGauge(dfdb.NbModel, table="test_boundary_lenient_gauge", ser_json_inf_nan="constants"):
    ratio: float | None = None


@pytest.fixture(params=["memory", "sqlite"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dfdb.NbApi]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/boundary.db"
    async with dfdb.connect(url) as nb:
        yield nb


# ----------------------------------------------------------------- nothing invalid is stored
async def test_an_object_changed_without_validation_is_refused(api: dfdb.NbApi) -> None:
    p = await api.create(LogicalSwitch(id="p1", topic="t1", mtu=1500))
    with pytest.raises(ValueError, match="mtu"):
        await api.update(p.model_copy(update={"mtu": "jumbo"}))
    with pytest.raises(ValueError, match="mtu"):
        await api.put(p.model_copy(update={"mtu": "jumbo"}))
    built = LogicalSwitch.model_construct(id="p2", topic="t1", version=0, mtu="jumbo")
    with pytest.raises(ValueError, match="mtu"):
        await api.create(built)
    [outcome] = await api.create_many([built])
    assert isinstance(outcome, ValueError)
    [outcome] = await api.update_many([p.model_copy(update={"mtu": "jumbo"})])
    assert isinstance(outcome, ValueError)
    assert await api.get_all(LogicalSwitch) == [p]  # p1 unchanged and readable, p2 never stored
    assert (await api.get(LogicalSwitch, "p1")).mtu == 1500


async def test_an_object_built_without_its_id_is_refused_in_its_place(api: dfdb.NbApi) -> None:
    keyless = LogicalSwitch.model_construct(topic="t1", mtu=1400)  # model_construct leaves out the id
    for call in (api.create, api.update, api.put):
        with pytest.raises(ValueError, match="id"):
            await call(keyless)
    with pytest.raises(ValueError, match="id"):
        await api.update(LogicalSwitch.model_construct(topic="t1", version="x"))
    good = LogicalSwitch(id="s", topic="t1")
    outcomes = await api.create_many([good, keyless, good.model_copy(update={"mtu": 1400})])
    assert isinstance(outcomes[0], LogicalSwitch) and outcomes[0].version == 1
    assert isinstance(outcomes[1], ValueError) and isinstance(outcomes[2], dfdb.AlreadyExistsError)
    [_, refused] = await api.update_many([outcomes[0].model_copy(update={"mtu": 1300}), keyless])
    assert isinstance(refused, ValueError)
    assert await api.get_all(LogicalSwitch) == [(await api.get(LogicalSwitch, "s"))]
    assert (await api.get(LogicalSwitch, "s")).mtu == 1300


class Strict(dfdb.NbModel, table="test_boundary_strict", extra="forbid"):
    n: int = 0


async def test_unknown_fields_of_a_model_that_forbids_them_are_refused(api: dfdb.NbApi) -> None:
    built = Strict(id="s").model_copy(update={"bogus": 1})  # model_copy keeps what validation refuses
    with pytest.raises(ValueError, match="bogus: Extra inputs are not permitted"):
        await api.create(built)
    [refused] = await api.create_many([built])
    assert isinstance(refused, ValueError)
    created = await api.create(Strict(id="s"))
    with pytest.raises(ValueError, match="bogus"):
        await api.update(created.model_copy(update={"bogus": 1}))
    assert (await api.get(Strict, "s")) == created  # read back: the write id is not a field of it
    assert await api.get_all(Strict) == [created]
    async with dfdb.Replica(api, [Strict]) as replica:
        await replica.wait_synced()
        assert replica.get(Strict, "s") == created


class Open(dfdb.NbModel, table="test_boundary_open", extra="allow"):
    n: int = 0


async def test_a_model_that_keeps_undeclared_fields_does_not_read_the_write_id_as_one(api: dfdb.NbApi) -> None:
    created = await api.create(Open(id="o", n=1, colour="red"))
    read = await api.get(Open, "o")
    assert read.model_extra == {"colour": "red"} and read.model_dump() == created.model_dump()
    updated = await api.update(read.model_copy(update={"n": 2}))
    stored = await api.driver.get("test_boundary_open", "o")
    assert stored is not None and stored.value.count(b'"_w"') == 1  # the write id once, not kept as a field
    assert (await api.get(Open, "o")).model_dump() == updated.model_dump()
    async with dfdb.Replica(api, [Open]) as replica:
        await replica.wait_synced()
        assert replica.get(Open, "o").model_extra == {"colour": "red"}
    with pytest.raises(ValueError, match="_w: the name is reserved"):  # it would be read back as the write id
        await api.create(Open(id="p", _w="mine"))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_nan_and_infinity_are_refused_not_stored_as_null(api: dfdb.NbApi, value: float) -> None:
    """JSON has no NaN: stored as null it would read back as another value (None) than the one
    written, where a plain float field refuses it."""
    for given in (Gauge(id="g", ratio=value), Gauge(id="g", extra={"a": [1.0, value]})):
        with pytest.raises(ValueError, match="NaN and infinity cannot be stored"):
            await api.create(given)
        [refused] = await api.create_many([given])
        assert isinstance(refused, ValueError)
    created = await api.create(Gauge(id="g", ratio=0.5))
    with pytest.raises(ValueError, match="ratio: NaN"):
        await api.update(created.model_copy(update={"ratio": value}))
    with pytest.raises(ValueError, match="ratio: NaN"):
        await api.patch(Gauge, "g", ratio=value)
    assert (await api.get(Gauge, "g")).ratio == 0.5
    kept = await api.create(LenientGauge(id="l", ratio=value))  # a model that stores them says so
    assert kept.ratio is not None and (math.isnan(kept.ratio) if math.isnan(value) else kept.ratio == value)


@pytest.mark.parametrize(
    "bad_id",
    ["../../etc/passwd", "", "a\x00b", pytest.param("x" * 5000, id="5000-chars"), "\udcff", ".."],
)
async def test_ids_set_without_validation_are_refused(api: dfdb.NbApi, bad_id: str) -> None:
    good = LogicalSwitch(id="ok", topic="t1")
    with pytest.raises(ValueError, match="id"):
        await api.create(good.model_copy(update={"id": bad_id}))
    with pytest.raises(ValueError, match="id"):
        await api.put(good.model_copy(update={"id": bad_id}))
    [outcome] = await api.create_many([good.model_copy(update={"id": bad_id})])
    assert isinstance(outcome, ValueError)
    with pytest.raises(ValueError, match="topic"):
        await api.create(good.model_copy(update={"topic": bad_id or "a/b"}))
    assert await api.get_all(LogicalSwitch) == []
    listing = await api.driver.list("lswitch")
    assert listing.entries == []


async def test_coerced_values_are_stored_in_their_validated_form(api: dfdb.NbApi) -> None:
    created = await api.create(LogicalSwitch(id="s", topic="t").model_copy(update={"mtu": "1400"}))
    assert created.mtu == 1400
    entry = await api.driver.get("lswitch", "s")
    assert entry is not None and b'"mtu":1400' in entry.value


async def test_the_stored_value_is_the_write_id_then_the_validated_objects_json(api: dfdb.NbApi) -> None:
    given = LogicalPort.model_construct(
        id="p", topic="t", version=7, lswitch="s", ips=("10.0.0.1",), macs=("FA-16-3E-00-00-01",)
    )
    created = await api.create(given)
    entry = await api.driver.get("lport", "p")
    assert entry is not None
    wid, _, rest = entry.value.removeprefix(b'{"_w":"').partition(b'",')
    assert len(wid) == 32 and int(wid, 16) >= 0
    assert b"{" + rest == created.model_dump_json().encode()
    assert created.version == 1 and created.macs == ("fa:16:3e:00:00:01",)
    assert given.version == 7 and given.ips == ("10.0.0.1",)  # the given object is left as it was
    updated = await api.update(created.model_copy(update={"name": "n"}))
    entry = await api.driver.get("lport", "p")
    assert entry is not None and entry.value.endswith(updated.model_dump_json().encode()[1:])
    assert entry.value[7:39] != wid and updated.version == 2


@pytest.mark.parametrize("bad", ["\udcff", "a\ud800", "\udfff\udfff"])
async def test_lone_surrogates_are_invalid_keys(api: dfdb.NbApi, bad: str) -> None:
    with pytest.raises(ValueError, match="not valid Unicode"):
        validate_key(bad)
    with pytest.raises(ValueError, match="not valid Unicode"):
        await api.get(LogicalSwitch, bad)
    with pytest.raises(ValueError, match="not valid Unicode"):
        await api.delete(LogicalSwitch, bad)
    with pytest.raises(ValueError, match="not valid Unicode"):
        await api.list(LogicalSwitch, topic=bad)
    with pytest.raises(ValueError):
        LogicalSwitch(id=bad)


async def test_patch_refuses_unknown_fields_and_leaves_the_version(api: dfdb.NbApi) -> None:
    await api.create(LogicalSwitch(id="s", topic="t"))
    with pytest.raises(ValueError, match="mtuu"):
        await api.patch(LogicalSwitch, "s", mtuu=9000)
    await api.create(LogicalPort(id="p", topic="t", lswitch="s"))
    with pytest.raises(ValueError, match=r"binding\.bogus"):
        await api.patch(LogicalPort, "p", binding={"chassis": "c1", "bogus": 1})
    assert (await api.get(LogicalSwitch, "s")).version == 1
    assert (await api.get(LogicalPort, "p")).version == 1


# ----------------------------------------------------------------- corrupt values are repairable
async def _store_corrupt(api: dfdb.NbApi, id: str, value: bytes) -> None:
    await api.driver.put("lswitch", id, "t1", value, ANY)


async def test_a_corrupt_object_can_be_deleted_by_id(api: dfdb.NbApi) -> None:
    await _store_corrupt(api, "bad", b'{"id":"bad","topic":"t1","version":3,"mtu":"jumbo"}')
    with pytest.raises(dfdb.CorruptObjectError):
        await api.get(LogicalSwitch, "bad")
    await api.delete(LogicalSwitch, "bad")
    with pytest.raises(dfdb.NotFoundError):
        await api.get(LogicalSwitch, "bad")


@pytest.mark.parametrize(
    ("value", "version"),
    [(b'{"id":"bad","topic":"t1","version":3,"mtu":"jumbo"}', 4), (b"\xff not json", 1)],
)
async def test_a_corrupt_object_can_be_replaced_by_id_with_put(api: dfdb.NbApi, value: bytes, version: int) -> None:
    await _store_corrupt(api, "bad", value)
    with pytest.raises(dfdb.CorruptObjectError):
        await api.patch(LogicalSwitch, "bad", mtu=1400)
    fixed = await api.put(LogicalSwitch(id="bad", topic="t1", mtu=1400))
    assert (fixed.version, fixed.mtu) == (version, 1400)
    assert await api.get(LogicalSwitch, "bad") == fixed
    assert await api.get_all(LogicalSwitch) == [fixed]
    with pytest.raises(ValueError, match="topic"):
        await api.put(LogicalSwitch(id="bad", topic="elsewhere"))


async def test_put_creates_and_replaces(api: dfdb.NbApi) -> None:
    first = await api.put(LogicalSwitch(id="s", topic="t", mtu=1000, version=41))
    assert first.version == 1
    second = await api.put(LogicalSwitch(id="s", topic="t", mtu=2000))
    assert (second.version, second.mtu) == (2, 2000)


# ----------------------------------------------------------------- timeouts and configuration
class HangDriver(MemoryDriver):
    """Writes never answer."""

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


register_driver("test-boundary-hang", HangDriver)


async def test_outcome_unknown_after_a_timeout_names_the_reason() -> None:
    async with dfdb.connect("test-boundary-hang://", timeout=0.2) as nb:
        with pytest.raises(dfdb.OutcomeUnknownError) as info:
            await nb.create(Counter(id="a"))
    assert str(info.value).endswith("no answer within 0.2s"), str(info.value)


async def test_a_batch_whose_reply_was_lost_is_finished_within_its_deadline_not_one_per_object() -> None:
    """A batch that timed out is finished write by write at once, sharing a deadline: not
    one timeout after another, each object's in turn (256 of them to a chunk)."""
    async with dfdb.connect("test-boundary-hang://", timeout=0.2) as nb:
        started = anyio.current_time()
        outcomes = await nb.create_many([Counter(id=f"c{i}") for i in range(30)])
        took = anyio.current_time() - started
    assert all(isinstance(o, dfdb.OutcomeUnknownError) for o in outcomes), outcomes
    assert took < 2.0, f"30 writes of a lost batch took {took:.1f}s at a 0.2s timeout"


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0, -math.inf, 1e12])
def test_nan_infinite_negative_and_huge_durations_are_refused(value: float) -> None:
    timeout_range = "timeout=.* is out of range: it must be above 0 and at most 86400 seconds"
    interval_range = "poll_interval=.* is out of range: it must be above 0 and at most 3600 seconds"
    with pytest.raises(dfdb.ConfigurationError, match=timeout_range):
        dfdb.connect("memory://", timeout=value)
    with pytest.raises(dfdb.ConfigurationError, match=interval_range):
        dfdb.connect("memory://", poll_interval=value)
    with pytest.raises(dfdb.ConfigurationError, match=timeout_range):
        dfdb.NbApi(MemoryDriver(dfdb.DatabaseURL.parse("memory://")), timeout=value)
    with pytest.raises(dfdb.ConfigurationError, match=interval_range):
        dfdb.NbApi(MemoryDriver(dfdb.DatabaseURL.parse("memory://")), poll_interval=value)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "abc", "-1", "0", "1e12"])
def test_bad_durations_in_the_url_are_refused_even_when_a_keyword_wins(text: str) -> None:
    with pytest.raises(dfdb.InvalidURL, match=r"timeout.*above 0 and at most 86400 seconds"):
        dfdb.connect(f"memory://?timeout={text}", timeout=5)
    with pytest.raises(dfdb.InvalidURL, match=r"poll_interval.*above 0 and at most 3600 seconds"):
        dfdb.connect(f"memory://?poll_interval={text}", poll_interval=1)


_DRIVER_OPTIONS = {
    "memory://x": {"history": "count"},
    "sqlite:///x.db": {"poll_interval": "s", "log_size": "count", "log_age": "s", "busy_timeout": "s"},
    "redis://h/0": {"maxlen": "count", "block": "s", "connect_timeout": "s"},
    "etcd://h/p": {
        "timeout": "s",
        "keepalive": "s",
        "keepalive_timeout": "s",
        "page": "count",
        "window": "count",
        "watch_hold": "s",
    },
    "zk://h/p": {
        "session_timeout": "s",
        "timeout": "s",
        "bucket_size": "count",
        "keep": "count",
        "idle": "s",
        "window": "count",
    },
}


@pytest.mark.parametrize(
    ("url", "option", "value"),
    [
        (url, option, value)
        for url, options in _DRIVER_OPTIONS.items()
        for option, kind in options.items()
        for value in (["nan", "inf", "-1", "1e12"] if kind == "s" else ["-1", str(10**12), "1e3"])
    ],
)
def test_absurd_driver_options_are_refused_naming_the_option_and_its_range(url: str, option: str, value: str) -> None:
    refused = rf"option {option}=\S+ (is out of range: it must be|is not an) .*(from|above) "
    with pytest.raises(dfdb.InvalidURL, match=refused):
        dfdb.connect(f"{url}?{option}={value}")


async def test_url_options_reach_a_driver_that_reads_them(tmp_path: Path) -> None:
    nb = dfdb.connect(f"sqlite:///{tmp_path}/x.db?poll_interval=0.05&timeout=4")
    assert (nb.timeout, nb.poll_interval) == (4.0, 0.05)
    assert nb.driver.poll_interval == 0.05  # type: ignore[attr-defined]
    async with nb:
        pass
    plain = dfdb.connect("memory://?timeout=4&poll_interval=0.1")  # memory reads neither
    assert (plain.timeout, plain.poll_interval) == (4.0, 0.1)


# ----------------------------------------------------------------- value size
async def test_a_value_over_the_backend_limit_is_refused_before_sending(api: dfdb.NbApi) -> None:
    limit = 4096
    api.driver.max_value_size = limit  # type: ignore[misc]
    small = await api.create(LogicalSwitch(id="small", name="x" * 1000))
    with pytest.raises(dfdb.ValueTooLargeError, match=f"{limit:,}") as info:
        await api.create(LogicalSwitch(id="big", name="x" * limit))
    assert isinstance(info.value, ValueError) and info.value.limit == limit
    with pytest.raises(dfdb.ValueTooLargeError):
        await api.update(small.model_copy(update={"name": "x" * limit}))
    [outcome] = await api.create_many([LogicalSwitch(id="big", name="x" * limit)])
    assert isinstance(outcome, dfdb.ValueTooLargeError)
    assert [o.id for o in await api.get_all(LogicalSwitch)] == ["small"]


async def test_memory_refuses_values_over_sixteen_mebibytes() -> None:
    async with dfdb.connect("memory://") as nb:
        assert nb.driver.max_value_size == 16 * 1024 * 1024
        with pytest.raises(dfdb.ValueTooLargeError, match="memory://"):
            await nb.create(LogicalSwitch(id="huge", name="x" * (16 * 1024 * 1024)))
        await nb.create(LogicalSwitch(id="large", name="x" * (16 * 1024 * 1024 - 1024)))


async def test_the_fault_injecting_wrapper_refuses_what_its_inner_driver_refuses() -> None:
    async with dfdb.connect("faulty://?inner=memory") as nb:
        assert nb.driver.max_value_size == 16 * 1024 * 1024
        with pytest.raises(dfdb.ValueTooLargeError, match="16,777,216") as info:
            await nb.create(LogicalSwitch(id="huge", name="x" * (16 * 1024 * 1024)))
        assert info.value.limit == 16 * 1024 * 1024
        assert await nb.get_all(LogicalSwitch) == []


# ----------------------------------------------------------------- patch under contention
@pytest.mark.timeout(120)
async def test_patch_under_contention_never_gives_up(api: dfdb.NbApi) -> None:
    await api.create(Counter(id="c"))

    async def worker(k: int) -> list[Counter]:
        return [await api.patch(Counter, "c", n=k * 1000 + i) for i in range(50)]

    results = [obj for done in await asyncio.gather(*(worker(k) for k in range(8))) for obj in done]
    assert sorted(obj.version for obj in results) == list(range(2, 402))
    assert (await api.get(Counter, "c")).version == 401
    if api.url.scheme == "sqlite":  # memory never yields between the read and the write
        assert api.conflict_retries > 0


# ----------------------------------------------------------------- retries are counted and logged
class LossyDriver(MemoryDriver):
    """The first reply of every write is lost (the write itself is applied)."""

    async def put(self, table: str, id: str, topic: str | None, value: bytes, expect: Expect) -> int:
        await super().put(table, id, topic, value, expect)
        raise dfdb.BackendUnavailableError("connection reset")


register_driver("test-boundary-lossy", LossyDriver)


async def test_retries_are_counted_and_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dfdb.nb")
    async with dfdb.connect("test-boundary-lossy://", timeout=5) as nb:
        assert nb.retries == 0
        created = await nb.create(Counter(id="a"))
        assert created.version == 1
        assert nb.retries == 1
    records = [r for r in caplog.records if r.name == "dfdb.nb" and "retry" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG
    assert "connection reset" in records[0].getMessage()
