"""Edges of the etcd driver: deadlines during authentication, a stream's cursor after a
lease's end, and where a reconnected watch resumes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import anyio
import pytest

import dfdb
from dfdb.events import Action, parse_cursor
from dfdb.servers import EtcdServer
from watching import serve


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port that takes TCP connections and never answers: every gRPC call to it waits."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        yield silent.getsockname()[1]


async def test_a_deadline_during_authentication_is_a_dfdb_error() -> None:
    """gRPC ends an ``Authenticate`` call cancelled by a deadline with a CancelledError of its
    own: the NbApi's deadline and the caller's anyio one end as dfdb errors, and a cancellation
    from outside still propagates."""
    with silent_port() as port:
        url = f"etcd://u:pw@127.0.0.1:{port}/p"
        with pytest.raises(dfdb.BackendUnavailableError):
            async with dfdb.connect(url, timeout=0.3):
                pass
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.3):
                async with dfdb.connect(url, timeout=5):
                    pass
        task = asyncio.get_running_loop().create_task(dfdb.connect(url, timeout=5).open())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class Port(dfdb.NbModel, table="etcd_edge_port"):
    n: int = 0


@pytest.fixture
def default_progress() -> Iterator[EtcdServer]:
    """etcd at its default progress notification interval (10 minutes)."""
    yield from serve(lambda: EtcdServer(1, progress_interval="10m"))


async def test_a_lease_ending_in_one_topic_moves_the_cursor_of_the_others_promptly(
    default_progress: EtcdServer,
) -> None:
    """A lease bound to objects of one topic ends: the watches of the other topics had no
    change at that revision, and the stream's cursor (and a Replica's ``wait_for``) passes it
    at once, not at their next progress notification."""
    async with dfdb.connect(default_progress.url + "/lease-cursor") as nb:
        async with dfdb.Replica(nb, [Port], mode=dfdb.SyncMode.SELECTIVE, topics={"a", "b"}) as replica:
            await replica.wait_synced()
            async with nb.watch(Port, topics={"a", "b"}) as stream:
                async with nb.lease(ttl=30) as lease:
                    await nb.create(Port(id="p", topic="a"), lease=lease)
                    await nb.create(Port(id="q", topic="b"))
                    async with asyncio.timeout(5):
                        await anext(stream)
                        await anext(stream)
                async with asyncio.timeout(5):
                    gone = await anext(stream)
                assert (gone.action, gone.expired) == (Action.DELETE, True)
                async with asyncio.timeout(3):
                    while parse_cursor(stream.cursor)[1] < gone.revision:
                        await asyncio.sleep(0.02)
            async with asyncio.timeout(3):
                await replica.wait_for(gone.revision)
            assert replica.get(Port, "p") is None


class PagedPort(dfdb.NbModel, table="etcd_paged_port"):
    n: int = 0


async def test_a_listing_over_growing_pages_reads_every_key_once(
    dfdb_etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Pages start at ``page`` keys and grow: every boundary keeps every key, once, and a
    foreign index key in the middle is reported and skipped."""
    from aetcd import rpc

    async with dfdb.connect(dfdb_etcd_server.url + "/paged?page=2") as nb:
        ports = [PagedPort(id=f"p{i:03}", topic=f"t{i % 2}", n=i) for i in range(61)]
        assert not [r for r in await nb.create_many(ports) if isinstance(r, Exception)]
        foreign = rpc.PutRequest(key=b"paged/i/etcd_paged_port/p030x", value=b"rewritten by another tool")
        await nb.driver._call("Put", foreign)  # type: ignore[attr-defined]
        listing = await nb.list(PagedPort)
        assert [(p.id, p.n) for p in listing.items] == [(p.id, p.n) for p in ports]
        assert "p030x" in caplog.text
        topic = await nb.list(PagedPort, topic="t1")
        assert [p.id for p in topic.items] == [p.id for p in ports if p.topic == "t1"]
