"""One background task owned by an object, on asyncio and trio alike.

Under asyncio the task belongs to the event loop, so its owner may be closed from any
task (``asyncio.wait_for(replica.aclose(), …)`` runs ``aclose`` in a task of its own).
Under trio no task outlives its nursery: the task runs in an anyio task group entered by
the task that starts it, and only that task may stop it (another one gets a clear
``RuntimeError`` and nothing is disturbed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskGroup

from dfdb.retry import running_asyncio_task

__all__ = ["BackgroundTask"]


class BackgroundTask:
    """Runs one coroutine function in the background until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[None] | None = None
        self._group: TaskGroup | None = None
        self._owner: int | None = None

    async def start(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``fn()``; it must handle its own errors (an error ends only the task)."""
        if running_asyncio_task() is not None:

            async def run() -> None:
                await fn()

            self._task = asyncio.get_running_loop().create_task(run(), name=self.name)
            return
        group = anyio.create_task_group()
        await group.__aenter__()
        group.start_soon(fn, name=self.name)
        self._group, self._owner = group, anyio.get_current_task().id

    async def stop(self) -> None:
        """Cancel the task and wait until it ended; idempotent.

        Raises:
            RuntimeError: under trio, called by another task than the one that started it.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # a cancelled caller still raises; the task ends anyway
            return
        group = self._group
        if group is None:
            return
        if anyio.get_current_task().id != self._owner:
            raise RuntimeError(f"{self.name}: under trio, close it in the task that opened it")
        self._group = None
        group.cancel_scope.cancel()
        await group.__aexit__(None, None, None)
