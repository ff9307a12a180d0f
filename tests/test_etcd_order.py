"""Order and completeness of etcd streams of several topics (one etcd watch per topic):
revisions that change keys of several topics at once, watches etcd sets aside while the
stream is slow, and topics added from a past cursor."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

import dfdb
from dfdb.events import Action, ChangeEvent, parse_cursor
from dfdb.servers import EtcdServer
from watching import serve


class Port(dfdb.NbModel, table="etcd_order_port"):
    n: int = 0
    label: str = ""


@pytest.fixture
def single() -> Iterator[EtcdServer]:
    yield from serve(lambda: EtcdServer(1))


async def _read(stream: dfdb.ChangeStream, count: int, within: float = 10) -> list[ChangeEvent]:
    async with asyncio.timeout(within):
        return [await anext(stream) for _ in range(count)]


async def test_a_lease_ending_across_topics_loses_no_delete_when_the_watch_reconnects_between_replies(
    single: EtcdServer,
) -> None:
    """A lease with objects in three topics ends: etcd deletes them all in one revision,
    and sends each topic's watch its own reply. The stream breaks (the server restarts)
    right after the first reply was read: the other watches resume at that revision, not
    after it, and every delete arrives once, as an expiry, with a cursor that never
    passed a delete not yet delivered."""
    topics = ("t1", "t2", "t3")
    async with dfdb.connect(single.url + "/lease-ends", timeout=10) as nb:
        async with nb.watch(Port, topics=set(topics)) as stream:
            async with nb.lease(ttl=30) as lease:
                for topic in topics:
                    await nb.create(Port(id=f"p-{topic}", topic=topic), lease=lease)
                await _read(stream, len(topics))
            first = (await _read(stream, 1))[0]
            assert (first.action, first.expired) == (Action.DELETE, True)
            assert parse_cursor(stream.cursor)[1] < first.revision  # the other topics' deletes are not delivered yet
            single.restart()  # the replies of the other topics, sent meanwhile, are lost with the connection
            rest = await _read(stream, len(topics) - 1, within=20)
            extra: list[ChangeEvent] = []
            with contextlib.suppress(TimeoutError):
                extra.append(await asyncio.wait_for(anext(stream), 1.5))  # no repeat follows
    deletes = [first, *rest, *extra]
    assert sorted(ev.id for ev in deletes) == [f"p-{topic}" for topic in topics], deletes
    assert {(ev.action, ev.expired, ev.revision) for ev in deletes} == {(Action.DELETE, True, first.revision)}


async def test_a_watch_etcd_sets_aside_for_a_slow_stream_is_not_taken_as_in_sync(single: EtcdServer) -> None:
    """Large changes of two topics while the consumer reads nothing: etcd's queue for the
    stream fills, and it sets a watch aside (a "victim") while the other watch's later
    changes go out; its own come later. They are not returned after newer ones as if the
    watch had been in sync: the stream stays in revision order, and each topic's changes
    all arrive, or a ``RESYNC`` of that topic stands for those that came late."""
    count, label = 300, "x" * 20_000
    async with dfdb.connect(single.url + "/victims", timeout=10) as nb:
        async with nb.watch(Port, topics={"t1", "t2"}) as stream:
            made = {topic: await nb.create(Port(id=topic, topic=topic)) for topic in ("t1", "t2")}
            await _read(stream, 2)

            async def write(topic: str) -> None:
                obj = made[topic]
                for n in range(count):
                    obj = await nb.update(obj.model_copy(update={"n": n + 1, "label": label}))
                made[topic] = obj

            await asyncio.gather(write("t1"), write("t2"))
            events: list[ChangeEvent] = []

            def done(topic: str) -> bool:  # its last change came, or a RESYNC of it
                return any(ev.topic == topic and (ev.obj is None or ev.obj.n == count) for ev in events)

            async with asyncio.timeout(30):
                while not (done("t1") and done("t2")):
                    events.append(await anext(stream))
            with contextlib.suppress(TimeoutError):
                while True:  # and whatever follows
                    events.append(await asyncio.wait_for(anext(stream), 1))
    revisions = [ev.revision for ev in events]
    assert revisions == sorted(revisions)
    for topic in ("t1", "t2"):
        updates = [ev.obj.n for ev in events if ev.topic == topic and ev.obj is not None]
        resynced = any(ev.action == Action.RESYNC and ev.topic == topic for ev in events)
        if resynced:  # the changes it stands for are left out; the others come once, in order
            assert updates == sorted(set(updates)) and set(updates) <= set(range(1, count + 1)), updates
        else:
            assert updates == list(range(1, count + 1)), updates


async def test_a_topic_added_from_a_past_cursor_keeps_the_stream_in_revision_order(single: EtcdServer) -> None:
    """A topic added from a cursor older than changes the stream returned already: its
    changes in between cannot come in revision order any more, so a ``RESYNC`` of that
    topic stands for them (not the changes themselves after newer ones), and its later
    changes follow in order."""
    async with dfdb.connect(single.url + "/added", timeout=10) as nb, nb.watch(Port, topics={"t1"}) as stream:
        listing = await nb.list(Port, topic="t2")
        await nb.create(Port(id="b", topic="t2"))  # after the listing: older than c
        c = await nb.create(Port(id="c", topic="t1"))
        events = await _read(stream, 1)
        await stream.add_topics({"t2"}, since=listing.cursor)
        d = await nb.create(Port(id="d", topic="t2"))
        async with asyncio.timeout(10):
            while events[-1].id != "d":
                events.append(await anext(stream))
    assert [(ev.action, ev.id, ev.topic, ev.revision) for ev in events] == [
        (Action.CREATE, "c", "t1", dfdb.revision_of(c)),
        (Action.RESYNC, "", "t2", dfdb.revision_of(c)),
        (Action.CREATE, "d", "t2", dfdb.revision_of(d)),
    ]
    assert events[1].model is Port
