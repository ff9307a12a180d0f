"""A memory driver whose change log can name one topic's history lost, as a backend that
lost one topic's history sends: a record of action ``topic-resync`` (written with
``inject_change``) is read as a ``RESYNC`` of every table for its topic."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from dfdb.drivers.base import EventSource, RawEvent
from dfdb.drivers.memory import MemoryDriver, _MemorySource


class TopicResyncSource(_MemorySource):
    """Reads a record of action ``topic-resync`` as a ``RESYNC`` of its topic."""

    def _matching(self, events: Iterable[RawEvent], topics: Collection[str | None] | None) -> list[RawEvent]:
        found: list[RawEvent] = []
        for ev in events:
            if ev.action == "topic-resync":  # type: ignore[comparison-overlap]
                if topics is None or ev.topic in topics:
                    found.append(RawEvent("resync", None, "", ev.topic, None, ev.revision))
            else:
                found += super()._matching([ev], topics)
        return found


class TopicResyncDriver(MemoryDriver):
    """The memory driver, whose change log can name one topic's history lost."""

    async def watch(
        self, tables: Collection[str], topics: Collection[str | None] | None = None, since: int | None = None
    ) -> EventSource:
        store = self._open_store()
        return self._track(TopicResyncSource(store, tables, topics, store.revision if since is None else since))
