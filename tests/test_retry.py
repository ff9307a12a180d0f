"""dfdb.retry's cancellation checks on asyncio and trio."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from dfdb.retry import checkpoint_if_cancelled


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_checkpoint_if_cancelled_raises_in_a_cancelled_scope(backend: str) -> None:
    async def main() -> None:
        reached = []
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await anyio.sleep(1)
            except anyio.get_cancelled_exc_class():
                pass  # swallowed, as some client libraries do
            await checkpoint_if_cancelled()
            reached.append("after the check")
        assert scope.cancelled_caught
        assert reached == []
        await checkpoint_if_cancelled()  # outside the cancelled scope: returns

    anyio.run(main, backend=backend)


def test_checkpoint_if_cancelled_sees_a_swallowed_asyncio_cancel() -> None:
    async def main() -> None:
        reached = []

        async def victim() -> None:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                pass  # swallowed
            await checkpoint_if_cancelled()
            reached.append("after the check")

        task = asyncio.create_task(victim())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert reached == []

    asyncio.run(main())
