"""Follow changes without losing any: list, watch from the list's cursor, resume.

Run: python examples/watch_resume.py [URL]   (default: memory://)
"""

from __future__ import annotations

import asyncio
import sys

import dfdb
from dfdb.models import LogicalSwitch


async def main(url: str) -> None:
    async with dfdb.connect(url) as nb:
        await nb.create(LogicalSwitch(id="net-a", topic="tenant-1", name="a"))
        listing = await nb.list(LogicalSwitch)  # the state, and the cursor it is consistent with
        view = {sw.id: sw for sw in listing.items}

        async with nb.watch(LogicalSwitch, since=listing.cursor) as stream:
            await nb.create(LogicalSwitch(id="net-b", topic="tenant-1", name="b"))
            await nb.patch(LogicalSwitch, "net-a", mtu=9000)
            for _ in range(2):
                ev = await anext(stream)
                print(ev.action, ev.id, "revision", ev.revision)
                if ev.obj is not None:
                    view[ev.id] = ev.obj  # type: ignore[assignment]
            cursor = stream.cursor  # where to resume

        # The consumer was away; these changes happen meanwhile.
        await nb.delete(LogicalSwitch, "net-b")

        async with nb.watch(LogicalSwitch, since=cursor) as stream:
            ev = await anext(stream)
            if ev.action == dfdb.Action.RESYNC:  # history gone: reconcile from a fresh list
                view = {sw.id: sw for sw in await nb.get_all(LogicalSwitch)}
            else:
                print(ev.action, ev.id, "revision", ev.revision)
                view.pop(ev.id, None)
        assert view == {sw.id: sw for sw in await nb.get_all(LogicalSwitch)}
        print("view matches the database:", sorted(view))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))
