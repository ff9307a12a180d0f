"""A topic added to a watch (and to a SELECTIVE Replica) while the stream's read waits on the
other topics: the added topic's changes older than the change that ends the wait come first,
and the cursor never passes them; against real etcd, ZooKeeper and Redis servers (on Redis,
before its fix, the change that ended the wait came first and a Replica's ``wait_for``
returned before the added topic's change; more of Redis in ``test_redis_trim.py``)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import dfdb
from dfdb import Replica, SyncMode, revision_of
from dfdb.replica.chassis import ChassisTopics

WAIT = 10


class Port(dfdb.NbModel, table="ato_port"):
    n: int = 0


@pytest.fixture(params=["etcd", "zookeeper", "redis"])
def server_url(request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue(f"dfdb_{request.param}_server")
    host = server.url.split("://", 1)[1].split("?", 1)[0].split("/", 1)[0]
    scheme = {"zookeeper": "zk", "etcd": "etcd", "redis": "redis"}[request.param]
    if scheme == "redis":
        return f"redis://{host}/0?prefix=ato{uuid.uuid4().hex[:12]}"
    return f"{scheme}://{host}/ato{uuid.uuid4().hex[:12]}"


async def _pending(task: asyncio.Task[Any]) -> None:
    """Let ``task`` run up to the read it waits on."""
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()


async def test_a_topic_added_during_a_read_keeps_the_merge_in_revision_order(server_url: str) -> None:
    async with dfdb.connect(server_url) as nb:
        await nb.create(Port(id="z", topic="t2"))  # the scope's tables exist before the watch
        async with nb.watch(Port, topics={"t2"}) as stream:
            first: asyncio.Task[dfdb.ChangeEvent] = asyncio.create_task(anext(stream))
            await _pending(first)
            await stream.add_topics({"t1"}, since=stream.cursor)
            older = await nb.create(Port(id="a", topic="t1"))  # not in the waiting read's scope
            newer = await nb.create(Port(id="b", topic="t2"))  # ends the wait
            got = [await asyncio.wait_for(first, WAIT), await asyncio.wait_for(anext(stream), WAIT)]
            assert [(ev.id, ev.revision) for ev in got] == [("a", revision_of(older)), ("b", revision_of(newer))]
            assert got[0].cursor.endswith(f"@{revision_of(older)}")


@pytest.mark.parametrize("how", ["add_topic", "chassis"])
async def test_a_topic_added_to_a_selective_replica_during_its_read_is_never_passed(server_url: str, how: str) -> None:
    """The Replica's ``wait_for`` of a later change of another topic returns only once the
    added topic's older change is applied, and a reopened stream does not skip it."""
    async with dfdb.connect(server_url) as nb:
        await nb.create(Port(id="z", topic="t2"))
        async with Replica(nb, [Port], mode=SyncMode.SELECTIVE, topics={"t2"}, check_interval=None) as replica:
            probe = await nb.create(Port(id="p", topic="t2"))
            await asyncio.wait_for(replica.wait_for(revision_of(probe) or 0), WAIT)  # its read now waits
            if how == "add_topic":
                await replica.add_topic("t1")
            else:
                await ChassisTopics(replica, "c1", chassis_of=lambda _: "c1").port_bound(Port(id="port", topic="t1"))
            older = await nb.create(Port(id="a", topic="t1"))
            newer = await nb.create(Port(id="b", topic="t2"))
            await asyncio.wait_for(replica.wait_for(revision_of(newer) or 0), WAIT)
            held = replica.get(Port, "a")
            assert held is not None and revision_of(held) == revision_of(older)
            assert replica._stream is not None
            await replica.remove_topic("t2")  # a stream that reopens from its cursor
            later = await nb.update(held.model_copy(update={"n": 1}))
            await asyncio.wait_for(replica.wait_for(revision_of(later) or 0), WAIT)
            assert replica.get(Port, "a") == later
