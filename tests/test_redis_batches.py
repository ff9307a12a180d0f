"""Batches of writes on Redis: several writes per script call, each with its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

import dfdb
from dfdb.drivers.base import ABSENT, ANY, PutRequest
from dfdb.testing.servers import RedisServer
from watching import serve

TABLE = "batch_port"


class Port(dfdb.NbModel, table=TABLE):
    n: int = 0


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    yield from serve(lambda: RedisServer(appendonly=False))


async def evalsha_calls(admin: aioredis.Redis) -> int:
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_batch_reports_each_write_in_its_place_and_takes_few_script_calls(server: RedisServer) -> None:
    """Refusals of every kind, and a write stopped by another program's key, amid 200
    writes: each outcome in its place, every other write made (with its change in the
    streams), in a few script calls rather than one per write."""
    admin = aioredis.Redis.from_url(server.url)
    try:
        async with dfdb.connect(server.url + "?prefix=mixed") as nb:
            driver = nb.driver
            old = await driver.put(TABLE, "old", "t", b'{"id":"old"}', ABSENT)
            await admin.set(f"mixed/e/{TABLE}/foreign", "another program's")
            await admin.set(f"mixed/e/{TABLE}/replaced", "another program's")
            await admin.set(f"mixed/i/{TABLE}/t/jammed", "another program's")  # no SADD to this index
            special = {
                10: (PutRequest(TABLE, "old", "t", b"{}", ABSENT), dfdb.AlreadyExistsError),
                70: (PutRequest(TABLE, "old", "t", b"{}", old + 100), dfdb.ConflictError),
                71: (PutRequest(TABLE, "missing", "t", b"{}", 5), dfdb.NotFoundError),
                130: (PutRequest(TABLE, "old", "other", b"{}", ANY), ValueError),
                131: (PutRequest(TABLE, "foreign", "t", b"{}", ABSENT), dfdb.CorruptObjectError),
                190: (PutRequest(TABLE, "jam", "jammed", b"{}", ABSENT), dfdb.DriverError),
            }
            writes = [PutRequest(TABLE, f"p{i}", "t", b'{"n":%d}' % i, ABSENT) for i in range(200)]
            for i, (request, _) in special.items():
                writes[i] = request
            writes[199] = PutRequest(TABLE, "replaced", "t", b'{"n":199}', ANY)
            before = await evalsha_calls(admin)
            outcomes = await driver.put_many(writes)
            assert await evalsha_calls(admin) - before <= 4
            made = {}
            for i, (request, outcome) in enumerate(zip(writes, outcomes, strict=True)):
                if i in special:
                    assert isinstance(outcome, special[i][1]), (i, outcome)
                else:
                    assert isinstance(outcome, int), (i, outcome)
                    made[request.id] = outcome
            assert len(made) == 194
            revisions = list(made.values())
            assert revisions == sorted(revisions) and revisions[0] > old  # made in the batch's order
            for id, revision in made.items():
                entry = await driver.get(TABLE, id)
                assert entry is not None and entry.revision == revision
            changes = await admin.xrange(f"mixed/s/{TABLE}/t/t")
            logged = {fields[b"i"].decode(): int(eid.split(b"-")[0]) for eid, fields in changes}
            assert {id: logged[id] for id in made} == made
    finally:
        await admin.aclose()


async def test_a_batch_spanning_a_flushed_script_cache_and_a_new_epoch_is_made_whole(server: RedisServer) -> None:
    admin = aioredis.Redis.from_url(server.url)
    try:
        async with dfdb.connect(server.url + "?prefix=again") as nb:
            await nb.create(Port(id="first"))
            await admin.script_flush()  # as a restarted server's
            await admin.delete("again/epoch")
            created = await nb.create_many([Port(id=f"p{i}", n=i) for i in range(150)])
            assert [p.n for p in created if isinstance(p, Port)] == list(range(150))
            assert len(await nb.get_all(Port)) == 151
    finally:
        await admin.aclose()


async def test_a_batch_of_a_user_refused_one_topic_stream_writes_the_others(server: RedisServer) -> None:
    """The ACL lets the user append to the stream of topic ``ok`` only: in one batch, each
    write of the other topic is refused whole (nothing of it written), the others made."""
    admin = aioredis.Redis.from_url(server.url)
    ns = "acl"
    keys = [f"{ns}/{key}" for key in ("epoch", "rev", "trim", "e/*", "i/*", f"s/{TABLE}", f"s/{TABLE}/t/ok")]
    try:
        await admin.acl_setuser("erin", enabled=True, passwords=["+secret"], keys=keys, commands=["+@all"])
        host, port = server.url.removeprefix("redis://").split("/")[0].split(":")
        url = f"redis://erin:secret@{host}:{port}/0?prefix={ns}"
        async with dfdb.connect(url) as nb:
            ports = [Port(id=f"p{i}", topic="ok" if i % 3 else "no", n=i) for i in range(150)]
            results = await nb.create_many(ports)
            for i, result in enumerate(results):
                if i % 3:
                    assert isinstance(result, Port) and result.version == 1, (i, result)
                else:
                    assert isinstance(result, dfdb.AuthenticationError), (i, result)
                    assert "nothing was written" in str(result)
            assert {p.id for p in await nb.get_all(Port)} == {f"p{i}" for i in range(150) if i % 3}
            assert await admin.xlen(f"{ns}/s/{TABLE}") == 100
    finally:
        await admin.acl_deluser("erin")
        await admin.aclose()


async def test_a_batch_trims_its_streams_as_single_writes_do(server: RedisServer) -> None:
    """maxlen=10: a stream is cut back to 10 records once it holds 12, recording the highest
    revision it discarded; within one script call as across calls. A watcher behind the
    trimmed history gets RESYNC; one within it, each change."""
    admin = aioredis.Redis.from_url(server.url)
    try:
        async with dfdb.connect(server.url + "?prefix=trim&maxlen=10") as nb:
            driver = nb.driver
            first = await driver.put(TABLE, "first", "t", b"{}", ABSENT)
            outcomes = await driver.put_many([PutRequest(TABLE, f"p{i}", "t", b"{}", ABSENT) for i in range(150)])
            assert outcomes == list(range(first + 1, first + 151))
            for key in (f"trim/s/{TABLE}", f"trim/s/{TABLE}/t/t"):
                kept = [int(eid.split(b"-")[0]) for eid, _ in await admin.xrange(key)]
                assert 10 <= len(kept) <= 11
                assert kept == list(range(kept[0], first + 151))  # the newest, none missing
                assert int(await admin.hget("trim/trim", key)) == kept[0] - 1
            behind = await driver.watch([TABLE], since=first)
            try:
                assert (await asyncio.wait_for(anext(behind), 10)).action == "resync"
            finally:
                await behind.aclose()
            within = await driver.watch([TABLE], since=first + 145)
            try:
                got = [await asyncio.wait_for(anext(within), 10) for _ in range(5)]
                assert [(e.id, e.revision) for e in got] == [(f"p{i}", first + 1 + i) for i in range(145, 150)]
            finally:
                await within.aclose()
    finally:
        await admin.aclose()


async def test_a_batch_of_large_values_is_split_by_size(server: RedisServer) -> None:
    """Values of 700 KB: a script call takes writes until their values reach 1 MiB (one
    request stays small however large the batch's values are); every value is stored whole."""
    admin = aioredis.Redis.from_url(server.url)
    try:
        async with dfdb.connect(server.url + "?prefix=large") as nb:
            driver = nb.driver
            values = [bytes([65 + i]) * 700_000 if i % 2 else b"{}" for i in range(12)]
            before = await evalsha_calls(admin)
            writes = [PutRequest(TABLE, f"p{i}", None, v, ABSENT) for i, v in enumerate(values)]
            outcomes = await driver.put_many(writes)
            assert await evalsha_calls(admin) - before == 3  # each call closed by its second large value
            assert all(isinstance(o, int) for o in outcomes)
            for i, value in enumerate(values):
                entry = await driver.get(TABLE, f"p{i}")
                assert entry is not None and entry.value == value and entry.topic is None
    finally:
        await admin.aclose()


async def test_update_many_is_batched_as_create_many_is(server: RedisServer) -> None:
    """update_many of 150 objects read through the NbApi: a few script calls, each update a
    compare-and-swap with its own outcome (one changed meanwhile: ConflictError)."""
    admin = aioredis.Redis.from_url(server.url)
    try:
        async with dfdb.connect(server.url + "?prefix=updates") as nb:
            created = await nb.create_many([Port(id=f"p{i}", n=i) for i in range(150)])
            ports = [p for p in created if isinstance(p, Port)]
            await nb.update(ports[70].model_copy(update={"n": -1}))  # changed since it was read
            before = await evalsha_calls(admin)
            updated = await nb.update_many([p.model_copy(update={"n": p.n + 1000}) for p in ports])
            assert await evalsha_calls(admin) - before <= 3
            assert isinstance(updated[70], dfdb.ConflictError)
            assert [u.version for i, u in enumerate(updated) if i != 70] == [2] * 149
            assert (await nb.get(Port, "p70")).n == -1 and (await nb.get(Port, "p71")).n == 1071
    finally:
        await admin.aclose()
