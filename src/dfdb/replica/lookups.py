"""The Replica's lookups: plain, non-blocking reads of its store (no query is sent). An object
held as its stored entry (a lazy load) is built on its first lookup; one whose value turns out
corrupt is reported and dropped, never returned."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

from dfdb.nbmodel import NbModel
from dfdb.replica.store import Store

__all__ = ["Lookups"]

M = TypeVar("M", bound=NbModel)


class Lookups:
    """The lookups of a :class:`~dfdb.Replica` over its store."""

    _store: Store

    def get(self, model: type[M], id: str) -> M | None:
        """The cached object, or ``None`` (a lookup, not a query)."""
        return self._store.obj(model, id)  # type: ignore[return-value]

    def get_all(self, model: type[M], topic: str | None = None) -> list[M]:
        """Every cached object of ``model`` (of one ``topic`` when given), sorted by id."""
        store = self._store
        rows = store.rows.get(model, {})
        ids = sorted(id for id, (held, _) in rows.items() if topic is None or held.topic == topic)
        return [obj for obj in map(store.obj, [model] * len(ids), ids) if obj is not None]  # type: ignore[misc]

    def by_index(self, model: type[M], index: str | tuple[str, ...], value: Hashable) -> list[M]:
        """The cached objects whose ``index`` (declared on the model) holds ``value``, sorted
        by id. A list field matches each element; a multi-field index takes a tuple.

        Raises:
            KeyError: ``model`` declares no such index.
        """
        key = (index,) if isinstance(index, str) else tuple(index)
        ids = self._store.lookup(model, key, value)
        if ids is None:
            raise KeyError(f"{model.__name__} declares no index {index!r} (indexes: {model.__indexes__})")
        store = self._store
        return [obj for obj in (store.obj(model, i) for i in ids) if obj is not None]  # type: ignore[misc]

    def get_one(self, model: type[M], index: str | tuple[str, ...], value: Hashable) -> M | None:
        """The one cached object whose ``index`` holds ``value``, or ``None``.

        Raises:
            ValueError: more than one object matches.
            KeyError: ``model`` declares no such index.
        """
        found = self.by_index(model, index, value)
        if len(found) > 1:
            raise ValueError(f"{len(found)} {model.__name__} objects have {index}={value!r}: {[o.id for o in found]}")
        return found[0] if found else None

    def resolve(self, ref: str, model: type[M] | None = None) -> M | None:
        """The cached target of a reference (``Ref`` values know their model), or ``None``."""
        target = model or getattr(ref, "target", None)
        if target is None:
            raise ValueError(f"cannot tell which model {ref!r} refers to; pass the model")
        return self.get(target, ref)

    def __len__(self) -> int:
        """Objects held. After a lazy load, a stored value is counted until it is found corrupt:
        a value the load itself decodes (one the plain parse cannot read) is never counted; any
        other counts until the background validation that starts right after the sync, or a
        lookup that builds it first, finds it corrupt (its value is not read for the count,
        which keeps the load fast). Such a value is reported once: a consistency check does not
        read it again until its revision changes."""
        return len(self._store)
