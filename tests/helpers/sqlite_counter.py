"""Increment one counter N times with read-update loops (for the cross-process CAS test).

Usage: python sqlite_counter.py URL N
"""

from __future__ import annotations

import asyncio
import sys

import dfdb


class Counter(dfdb.NbModel, table="two_process_counter"):
    n: int = 0


async def main(url: str, rounds: int) -> None:
    async with dfdb.connect(url) as nb:
        for _ in range(rounds):
            while True:
                current = await nb.get(Counter, "c")
                try:
                    await nb.update(current.model_copy(update={"n": current.n + 1}))
                    break
                except dfdb.ConflictError:
                    continue
        keys = [await nb.allocate_unique_key(Counter) for _ in range(rounds)]
        print(" ".join(map(str, keys)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
