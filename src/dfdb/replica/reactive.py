"""The REACTIVE part of a :class:`~dfdb.Replica`: objects fetched on first access, kept fresh
while held, least recently used ones evicted beyond ``max_objects``."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, TypeVar

from dfdb.errors import NotFoundError, StreamClosedError
from dfdb.nb import NbApi, revision_of
from dfdb.nbmodel import NbModel, reference_targets
from dfdb.replica.lookups import Lookups
from dfdb.replica.modes import SyncMode

if TYPE_CHECKING:
    from dfdb.events import ChangeStream

__all__ = ["Reactive"]

M = TypeVar("M", bound=NbModel)


class Reactive(Lookups):
    """Fetching on a miss and evicting (REACTIVE mode) for a :class:`~dfdb.Replica`."""

    nb: NbApi
    mode: SyncMode
    max_objects: int
    evictions: int
    _stream: ChangeStream | None
    _held_topics: dict[str | None, int]
    _recent: dict[tuple[type[NbModel], str], None]

    if TYPE_CHECKING:

        def _apply(
            self, model: type[NbModel], id: str, obj: NbModel | None, revision: int, expired: bool = False
        ) -> None: ...

        def _drop_row(self, model: type[NbModel], id: str) -> None: ...

        async def _narrow(self) -> None: ...

    async def fetch(self, model: type[M], id: str) -> M | None:
        """The object from the Replica, fetched from the database (with the objects it
        references) on a miss and kept fresh while held; ``None`` when it does not exist.

        Raises:
            ValueError: the Replica is not REACTIVE, or ``model`` is not one of its models.
        """
        if self.mode is not SyncMode.REACTIVE:
            raise ValueError("fetch needs SyncMode.REACTIVE; use get")
        if model not in self._store:
            raise ValueError(f"{model.__name__} is not one of this Replica's models")
        held = self._store.row(model, id)
        if held is not None:
            self._recent.pop((model, id), None)
            self._recent[(model, id)] = None
            return held[0]  # type: ignore[return-value]
        await self._fetch(model, id, depth=3)
        await self._evict()
        return self.get(model, id)

    async def _fetch(self, model: type[NbModel], id: str, depth: int) -> None:
        try:
            obj = await self.nb.get(model, id)
        except NotFoundError:
            return
        await self._follow_topic(obj.topic)
        fresh = await self.nb.get(model, id)  # read again after following: nothing falls between
        self._apply(model, id, fresh, revision_of(fresh) or 0)
        if depth > 0:
            for target, ref in reference_targets(fresh):
                if target in self._store and self._store.row(target, ref) is None:
                    with contextlib.suppress(NotFoundError):
                        await self._fetch(target, ref, depth - 1)

    async def _follow_topic(self, topic: str | None) -> None:
        stream = self._stream
        if stream is None or topic in self._held_topics:
            return
        with contextlib.suppress(StreamClosedError):  # reopening: the new stream follows it
            await stream.add_topics({topic}, since=stream.cursor)
        self._held_topics.setdefault(topic, 0)  # only once followed: a cancelled call adds nothing

    async def _evict(self) -> None:
        """Drop least recently used objects beyond ``max_objects``; a topic whose last
        object goes is no longer followed."""
        dropped = False
        while len(self._recent) > self.max_objects:
            model, id = next(iter(self._recent))
            self._drop_row(model, id)
            self._recent.pop((model, id), None)
            self.evictions += 1
            dropped = True
        if dropped:
            for topic in [t for t, n in self._held_topics.items() if n <= 0]:
                del self._held_topics[topic]
            await self._narrow()
