"""A Replica's load runs without Python's cyclic garbage collector, and leaves it as it found it."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import field_validator

import dfdb
from dfdb import NbApi, Replica
from dfdb._collector import collector_paused
from dfdb.drivers import ABSENT

WAIT = 10


class Probe(dfdb.NbModel, table="gc_probe"):
    """Records, each time a value is validated, whether the collector was enabled."""

    n: int = 0

    @field_validator("n")
    @classmethod
    def _seen(cls, n: int) -> int:
        if n < 0:
            raise RuntimeError("a validator that fails")
        SEEN.append(gc.isenabled())
        return n


SEEN: list[bool] = []


@pytest.fixture
def seen() -> Iterator[list[bool]]:
    SEEN.clear()
    yield SEEN
    SEEN.clear()


@pytest.fixture(params=["memory", "sqlite"])
async def nb(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NbApi]:
    url = "memory://gc" if request.param == "memory" else f"sqlite:///{tmp_path}/gc.db"
    async with dfdb.connect(url) as nb:
        await nb.create_many([Probe(id=f"p{i:03d}", topic="t", n=i) for i in range(300)])
        yield nb


@pytest.fixture
def collector() -> Iterator[None]:
    """The collector enabled for the test, and as it was afterwards."""
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


@pytest.mark.parametrize("listening", [False, True], ids=["lazy", "events"])
async def test_a_sync_loads_with_the_collector_paused(
    nb: NbApi, seen: list[bool], collector: None, listening: bool
) -> None:
    """Whether the values are built at the load (a model with validators), or with an events()
    consumer waiting (every value built before it is applied), the collector is off while they
    are, and on again once the Replica is entered."""
    replica = Replica(nb, [Probe], check_interval=None)
    events = replica.events() if listening else None
    async with replica:
        assert gc.isenabled()
        assert len(seen) == 300 and not any(seen)
        assert replica.get(Probe, "p123") == await nb.get(Probe, "p123")
        if events is not None:
            first = await asyncio.wait_for(anext(events), WAIT)
            assert (first.action, first.id) == (dfdb.Action.CREATE, "p000")
            await events.aclose()


@pytest.mark.parametrize("listening", [False, True], ids=["lazy", "events"])
async def test_a_load_that_fails_enables_the_collector_again(
    nb: NbApi, seen: list[bool], collector: None, listening: bool
) -> None:
    await nb.driver.put(Probe.__table__, "p150x", "t", b'{"id": "p150x", "topic": "t", "version": 1, "n": -1}', ABSENT)
    replica = Replica(nb, [Probe], check_interval=None)
    events = replica.events() if listening else None
    with pytest.raises(RuntimeError, match="a validator that fails"):
        async with replica:
            pass
    assert gc.isenabled()
    assert seen and not any(seen)  # the load had begun, paused
    if events is not None:
        await events.aclose()


async def test_a_collector_the_application_disabled_stays_disabled(nb: NbApi, seen: list[bool]) -> None:
    was = gc.isenabled()
    gc.disable()
    try:
        async with Replica(nb, [Probe], check_interval=None) as replica:
            assert not gc.isenabled()
            assert len(replica) == 300 and len(seen) == 300
        assert not gc.isenabled()
    finally:
        if was:
            gc.enable()


def test_pauses_that_overlap_in_two_threads_resume_when_the_last_ends(collector: None) -> None:
    inside, leave = threading.Event(), threading.Event()

    def listing() -> None:
        with collector_paused():
            inside.set()
            leave.wait(WAIT)

    thread = threading.Thread(target=listing)
    thread.start()
    try:
        assert inside.wait(WAIT) and not gc.isenabled()
        with collector_paused():
            leave.set()
            thread.join(WAIT)
            assert not thread.is_alive() and not gc.isenabled()  # the other pause ended, not this one
        assert gc.isenabled()
    finally:
        leave.set()
        thread.join(WAIT)


def test_a_pause_that_fails_resumes(collector: None) -> None:
    with pytest.raises(KeyError), collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
        raise KeyError("x")
    assert gc.isenabled()
