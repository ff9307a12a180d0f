"""Resource accounting: tasks, threads and file descriptors before and after a test."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from dataclasses import dataclass

import anyio
import sniffio

__all__ = ["LOOP_THREADS", "ResourceSnapshot"]


def _fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover - not Linux
        return 0


LOOP_THREADS = ("AnyIO worker thread", "Trio thread")
"""Names of the event loops' own worker-thread pools: their idle threads outlive a call by design."""


@dataclass(frozen=True)
class ResourceSnapshot:
    """The tasks, threads and open file descriptors of this process at one moment."""

    tasks: frozenset[asyncio.Task[object]]
    threads: frozenset[threading.Thread]
    fds: int

    @classmethod
    def take(cls) -> ResourceSnapshot:
        """Take a snapshot now (inside a running event loop). Tasks are asyncio's: under
        trio every task belongs to a nursery that outlives it, so none is counted."""
        tasks: frozenset[asyncio.Task[object]] = frozenset()
        if sniffio.current_async_library() == "asyncio":
            current = asyncio.current_task()
            tasks = frozenset(t for t in asyncio.all_tasks() if t is not current and not t.done())
        return cls(tasks, frozenset(threading.enumerate()), _fd_count())

    def leaks_since(self, baseline: ResourceSnapshot) -> list[str]:
        """What this snapshot holds beyond ``baseline``, described; empty when nothing."""
        problems = [f"task left running: {t.get_name()} ({t.get_coro()!r})" for t in self.tasks - baseline.tasks]
        problems += [
            f"thread left running: {t.name}"
            for t in self.threads - baseline.threads
            if t.is_alive() and not t.name.startswith(LOOP_THREADS)
        ]
        if self.fds > baseline.fds:
            problems.append(f"{self.fds - baseline.fds} file descriptor(s) left open")
        return problems

    @staticmethod
    async def wait_clean(baseline: ResourceSnapshot, grace: float = 2.0) -> list[str]:
        """Wait up to ``grace`` seconds for resources to return to ``baseline``;
        return what is still left over (empty when clean).

        A closed gRPC channel's descriptors (an epoll and an eventfd, its TCP connection)
        are released by gRPC's own threads after the channel object goes, and the object
        often sits in a reference cycle that gRPC's clean-up of a cancelled call leaves a
        moment after the close: the garbage collector runs every round while something is
        left (once at the start was too early for such a cycle). gRPC's threads release
        them seconds late on a busy machine: a long run gives a larger ``grace``."""
        deadline = anyio.current_time() + grace
        collected = -1.0
        while True:
            leaks = ResourceSnapshot.take().leaks_since(baseline)
            now = anyio.current_time()
            if not leaks or now >= deadline:
                return leaks
            if now - collected >= 0.1:  # what a reference cycle holds goes with it
                gc.collect()
                collected = now
            await anyio.sleep(0.01)
