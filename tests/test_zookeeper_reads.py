"""ZooKeeper listings read their nodes a batch per request (``multiRead``): the same
entries as reads one by one, absent nodes left out, batches sized by what they hold."""

from __future__ import annotations

import dfdb
from dfdb.servers import LocalServer


class Blob(dfdb.NbModel, table="zk_blob"):
    data: str = ""


def sizes(n: int) -> int:
    return 200_000 if n % 40 == 7 else n  # a few large values among small ones


async def test_a_listing_by_multi_read_equals_one_by_one(dfdb_zookeeper_server: LocalServer) -> None:
    async with dfdb.connect(dfdb_zookeeper_server.url + "/multiread") as nb:
        blobs = [Blob(id=f"b{n:03}", topic=f"t{n % 3}", data="x" * sizes(n)) for n in range(300)]
        assert not [r for r in await nb.create_many(blobs) if isinstance(r, Exception)]
        await nb.delete(Blob, "b150")
        for n in range(10, 20):  # their data nodes' mzxid above their czxid
            blobs[n] = await nb.patch(Blob, blobs[n].id, data="updated")
        calls = nb.driver._calls  # type: ignore[attr-defined]
        batched = await nb.driver.list("zk_blob")
        assert calls.multi_read is True
        calls.multi_read = False  # as with a server before 3.6: one getData a node
        single = await nb.driver.list("zk_blob")
        key = lambda e: e.id  # noqa: E731
        assert [(e.id, e.topic, e.value, e.revision) for e in sorted(batched.entries, key=key)] == [
            (e.id, e.topic, e.value, e.revision) for e in sorted(single.entries, key=key)
        ]
        assert sorted(e.id for e in batched.entries) == sorted(b.id for b in blobs if b.id != "b150")
        listing = await nb.list(Blob, topic="t1")
        assert [b.data for b in listing.items] == [b.data for b in blobs if b.topic == "t1" and b.id != "b150"]


async def test_multi_read_of_absent_and_present_nodes(dfdb_zookeeper_server: LocalServer) -> None:
    async with dfdb.connect(dfdb_zookeeper_server.url + "/multiread-nodes") as nb:
        calls = nb.driver._calls  # type: ignore[attr-defined]
        present = calls.identity_path
        data, stat = await calls.get(present)
        nodes = await calls.get_many(["/no-such-node", present, "/no/such/either"])
        assert nodes == [None, (data, int(stat.last_modified_zxid)), None]
        parent = present.rsplit("/", 1)[0]
        assert await calls.children_many(["/no-such-node", parent, "/"]) == [
            [],
            await calls.children(parent),
            await calls.children("/"),
        ]
