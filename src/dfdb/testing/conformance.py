"""What the conformance suite's tests share: its two models and waiting helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

import dfdb
import dfdb.drivers
from dfdb import ChangeEvent, ChangeStream, NbApi, NbModel, Ref

__all__ = ["WAIT", "ConformanceItem", "ConformanceLink", "events_until", "next_event", "raw_put"]

WAIT = 10.0


class ConformanceItem(NbModel, table="dfdb_conformance_item"):
    """The suite's main model."""

    n: int = 0
    label: str = ""


class ConformanceLink(NbModel, table="dfdb_conformance_link"):
    """A second table, referencing the first."""

    item: Ref[ConformanceItem] | None = None


async def next_event(stream: ChangeStream, within: float = WAIT) -> ChangeEvent:
    """The stream's next event, failing the test after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            return await anext(stream)
    except TimeoutError:
        pytest.fail(f"no change event within {within}s")


async def events_until(
    stream: ChangeStream, done: Callable[[], bool], within: float = WAIT
) -> AsyncIterator[ChangeEvent]:
    """Yield events until ``done()`` is true after one; fail after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while not done():
                yield await anext(stream)
    except TimeoutError:
        pytest.fail(f"the stream did not reach the expected state within {within}s")


async def raw_put(nb: NbApi, table: str, id: str, topic: str | None, value: bytes) -> None:
    """Write raw bytes straight through the driver (a lost reply is checked, not trusted)."""
    try:
        await nb.driver.put(table, id, topic, value, dfdb.drivers.ANY)
    except dfdb.BackendUnavailableError:
        entry = await nb.driver.get(table, id)
        assert entry is not None and entry.value == value
