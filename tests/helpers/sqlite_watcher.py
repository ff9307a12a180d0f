"""A watcher in its own OS process, for the two-process SQLite tests.

Usage: python sqlite_watcher.py URL
Prints ``READY``, then one JSON line per change event; on ``RESYNC`` it relists and
prints ``STATE {id: version}``; prints ``SEEN <marker>`` for objects whose id starts
with ``marker-`` (in events or in a relisting).
"""

from __future__ import annotations

import asyncio
import json
import sys

import dfdb


class Obj(dfdb.NbModel, table="two_process"):
    n: int = 0


def say(text: str) -> None:
    print(text, flush=True)


async def main(url: str) -> None:
    async with dfdb.connect(url) as nb:
        listing = await nb.list(Obj)
        async with nb.watch(Obj, since=listing.cursor) as stream:
            say("READY")
            async for ev in stream:
                if ev.action == dfdb.Action.RESYNC:
                    say("RESYNC")
                    state = {o.id: o.version for o in await nb.get_all(Obj)}
                    say("STATE " + json.dumps(state, sort_keys=True))
                    for key in sorted(state):
                        if key.startswith("marker-"):
                            say(f"SEEN {key}")
                    continue
                version = ev.obj.version if ev.obj else None
                say(json.dumps({"action": ev.action.value, "id": ev.id, "revision": ev.revision, "version": version}))
                if ev.id.startswith("marker-") and ev.action == dfdb.Action.CREATE:
                    say(f"SEEN {ev.id}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
