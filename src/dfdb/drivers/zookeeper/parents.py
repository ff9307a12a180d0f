"""Which shard nodes (the parents of index and data nodes) exist, so that a create makes
a missing one in its own ``multi`` instead of failing, creating it and writing again.

A scope (``/P/i/TABLE`` or ``/P/d/TABLE/LOC``) is read once with one ``getChildren`` when a
write first needs it; the shards this driver made or met are added as it goes. Shard
nodes are never deleted by dfdb, so what is known stays true; a shard another writer
created meanwhile makes the ``multi`` fail with ``NodeExists`` and the write is sent
again without it (:meth:`ShardParents.exist`).
"""

from __future__ import annotations

from collections.abc import Iterable

from dfdb.drivers.zookeeper.client import Calls

__all__ = ["ShardParents"]


class ShardParents:
    """The shard nodes known to exist, per scope."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self._known: dict[str, set[str]] = {}

    async def missing(self, parents: Iterable[str]) -> list[str]:
        """Those of ``parents`` (shard node paths) not known to exist, each once, in order;
        a scope not read yet is made if absent and read."""
        out: list[str] = []
        for path in parents:
            scope, shard = path.rsplit("/", 1)
            known = self._known.get(scope)
            if known is None:
                await self.calls.ensure(scope)
                known = self._known[scope] = set(await self.calls.children(scope))
            if shard not in known and path not in out:
                out.append(path)
        return out

    def exist(self, parents: Iterable[str]) -> None:
        """``parents`` exist now (made by a write, or met by one)."""
        for path in parents:
            scope, shard = path.rsplit("/", 1)
            self._known.setdefault(scope, set()).add(shard)

    def forget(self, parents: Iterable[str]) -> None:
        """Read the scopes of ``parents`` again before the next write (a node was missing)."""
        for path in parents:
            self._known.pop(path.rsplit("/", 1)[0], None)
