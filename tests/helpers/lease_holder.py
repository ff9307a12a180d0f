"""A lease or lock holder in an OS process of its own, for the liveness tests.

Usage: python lease_holder.py URL MODE ARGS…

``hold TTL N``
    grant a lease of TTL seconds, create the items h0 … h{N-1} bound to it, print
    ``READY``, then wait (the test kills the process). Should the lease end, print
    ``LEASE-LOST``, then try to create the item ``late`` bound to it and print ``WROTE``
    or ``REFUSED``, and wait.
``guarded TTL``
    take the lock ``guard`` (lease of TTL seconds), create the item ``g`` with
    ``guard=lock``, print ``READY TOKEN``; print ``LEASE-LOST`` when the lock's lease ends;
    for each line on stdin try ``update(g, n+1, guard=lock)`` and print ``WROTE`` or
    ``REFUSED``, until end of file.
``contend ROUNDS``
    ROUNDS times: take the lock ``counter`` (lease of 1 s), read the item ``count``, add
    1 and append the token to its ``tokens`` with ``guard=lock``; print
    ``OK TOKEN START END`` (wall-clock times: the lock taken, the write done, both while
    held) or ``REFUSED`` (the lease was lost while waiting or before the write).
"""

from __future__ import annotations

import sys
import time

import anyio
import anyio.to_thread

import dfdb


class LiveItem(dfdb.NbModel, table="liveness_item"):
    n: int = 0
    tokens: tuple[int, ...] = ()


def say(*words: object) -> None:
    print(*words, flush=True)


async def hold(nb: dfdb.NbApi, ttl: float, count: int) -> None:
    async with nb.lease(ttl=ttl) as lease:
        for i in range(count):
            await nb.create(LiveItem(id=f"h{i}", n=i), lease=lease)
        say("READY")
        await lease.lost
        say("LEASE-LOST")
        try:
            await nb.create(LiveItem(id="late"), lease=lease)
            say("WROTE")
        except dfdb.LeaseLostError:
            say("REFUSED")
        await anyio.sleep_forever()


async def guarded(nb: dfdb.NbApi, ttl: float) -> None:
    async with nb.lock("guard", ttl=ttl) as lock, anyio.create_task_group() as tg:

        async def report_loss() -> None:
            await lock.lost
            say("LEASE-LOST")

        tg.start_soon(report_loss)
        await nb.put(LiveItem(id="g"), guard=lock)
        say("READY", lock.token)
        while await anyio.to_thread.run_sync(sys.stdin.readline):
            item = await nb.get(LiveItem, "g")
            try:
                await nb.update(item.model_copy(update={"n": item.n + 1}), guard=lock)
                say("WROTE")
            except dfdb.LeaseLostError:
                say("REFUSED")
        tg.cancel_scope.cancel()


async def contend(nb: dfdb.NbApi, rounds: int) -> None:
    for _ in range(rounds):
        try:
            async with nb.lock("counter", ttl=1) as lock:
                start = time.time()
                item = await nb.get(LiveItem, "count")
                changed = {"n": item.n + 1, "tokens": (*item.tokens, lock.token)}
                await nb.update(item.model_copy(update=changed), guard=lock)
                say("OK", lock.token, start, time.time())
        except dfdb.LeaseLostError:  # lost while waiting for the lock, or before the write
            say("REFUSED")


async def main(url: str, mode: str, *args: str) -> None:
    async with dfdb.connect(url) as nb:
        if mode == "hold":
            await hold(nb, float(args[0]), int(args[1]))
        elif mode == "guarded":
            await guarded(nb, float(args[0]))
        else:
            await contend(nb, int(args[0]))


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
