"""The resource accounting behind every leak check (``dfdb.testing.leaks``)."""

from __future__ import annotations

import asyncio
import os

import anyio

from dfdb.testing.leaks import ResourceSnapshot


class _Pipe:
    """Two descriptors, closed when the object goes (as a gRPC channel's are)."""

    def __init__(self) -> None:
        self.fds = os.pipe()
        self.cycle = self  # only the garbage collector frees it

    def __del__(self) -> None:
        for fd in self.fds:
            os.close(fd)


async def test_what_a_late_reference_cycle_holds_is_collected_not_reported() -> None:
    baseline = ResourceSnapshot.take()
    held: list[_Pipe] = [_Pipe()]

    async def let_go() -> None:  # the last reference goes after the check began (gRPC's clean-up of a call)
        await anyio.sleep(0.3)
        held.clear()

    task = asyncio.create_task(let_go())
    assert ResourceSnapshot.take().leaks_since(baseline)  # two descriptors and a task, for now
    assert await ResourceSnapshot.wait_clean(baseline) == []
    await task


async def test_what_is_still_held_is_reported() -> None:
    baseline = ResourceSnapshot.take()
    pipes = [_Pipe() for _ in range(10)]  # 20 descriptors: more than the rest of a test run opens or closes meanwhile
    report = await ResourceSnapshot.wait_clean(baseline, grace=0.3)
    fds = [int(m.split()[0]) for m in report if m.endswith("file descriptor(s) left open")]
    assert fds and 15 <= fds[0] <= 25, report
    del pipes
