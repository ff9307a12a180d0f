"""Quick start: define a model, write it, read it back, handle a conflict.

Run: python examples/quickstart.py [URL]   (default: memory://)
"""

from __future__ import annotations

import asyncio
import sys

import dfdb


class Item(dfdb.NbModel, table="example_item"):
    n: int = 0


async def main(url: str) -> None:
    async with dfdb.connect(url) as nb:
        item = await nb.create(Item(id="a", topic="tenant-1"))
        print("created", item)
        newer = await nb.update(item.model_copy(update={"n": 2}))
        print("updated", newer)
        try:
            await nb.update(item.model_copy(update={"n": 3}))  # built from a stale copy
        except dfdb.ConflictError as exc:
            print("refused a stale update:", exc)
        patched = await nb.patch(Item, "a", n=newer.n + 1)
        print("patched", patched)
        print("all in tenant-1:", await nb.get_all(Item, topic="tenant-1"))
        await nb.delete(Item, "a")
        try:
            await nb.get(Item, "a")
        except dfdb.NotFoundError:
            print("deleted")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))
