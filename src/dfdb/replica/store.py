"""The Replica's store: its rows per model, their indexes, and tombstones of recent deletes."""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence

from dfdb.drivers.base import Entry
from dfdb.nbmodel import NbModel, reference_targets, references
from dfdb.replica.lazy import Reader, reader_for

__all__ = ["Held", "Row", "Store", "Unindexed"]

Row = tuple[NbModel, int]
"""A held object and the revision it was written at."""
Held = tuple[NbModel | Entry, int]
"""A row as stored: its object, or the stored entry not built yet (see :mod:`~dfdb.replica.lazy`),
and its revision. Both have a ``topic``."""
Build = Callable[[type[NbModel], Entry], NbModel | None]
"""Builds a held entry's object (``None``: its value is corrupt; the builder reports it)."""

_TOMBSTONES = 100_000
_COLLECTIONS = (list, tuple, set, frozenset)

KeysOf = Callable[[NbModel], Sequence[Hashable] | set[Hashable]]
"""The keys an object has in one index (repeats allowed)."""


class Store:
    """Rows of ``models`` by id, with the indexes each model declares (``__indexes__``) and
    the revision of recent deletes, so that an older change never brings a key back.

    A row may hold the stored entry instead of its object (:meth:`put_entry`, from a lazy
    load): :meth:`row` and :meth:`obj` build it on first access with ``build`` and keep the
    object; one that ``build`` finds corrupt is dropped and never returned."""

    def __init__(self, models: Iterable[type[NbModel]], build: Build | None = None) -> None:
        self.rows: dict[type[NbModel], dict[str, Held]] = {m: {} for m in models}
        """The rows of each model by id (read it; change it through the methods)."""
        self.build = build
        held = frozenset(self.rows)
        self.readers: dict[type[NbModel], Reader | None] = {m: reader_for(m, held) for m in self.rows}
        """How each model's stored values are read without building them (``None``: built at once)."""
        self._indexes: dict[type[NbModel], dict[tuple[str, ...], defaultdict[Hashable, set[str]]]] = {
            m: {index: defaultdict(set) for index in m.__indexes__} for m in self.rows
        }
        self._keyed: dict[type[NbModel], list[tuple[KeysOf, defaultdict[Hashable, set[str]]]]] = {
            m: [(keys_of(index), entries) for index, entries in by_index.items()]
            for m, by_index in self._indexes.items()
        }
        self._tombstones: dict[tuple[type[NbModel], str], int] = {}
        self._unindexed: dict[type[NbModel], Unindexed] = {m: Unindexed() for m in self.rows}  # held, keys not read yet
        self._refers: dict[type[NbModel], bool] = {}  # whether a model references one held here

    def __contains__(self, model: object) -> bool:
        return model in self.rows

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    def counts(self) -> dict[str, int]:
        """How many objects are held, by table."""
        return {model.__table__: len(rows) for model, rows in self.rows.items()}

    def row(self, model: type[NbModel], id: str) -> Row | None:
        """The held object of ``model`` ``id`` and its revision, or ``None`` (built now when
        it was held as its entry; ``None`` as well when that entry turns out corrupt)."""
        rows = self.rows.get(model)
        held = rows.get(id) if rows is not None else None
        if held is None or type(held[0]) is not Entry:
            return held  # type: ignore[return-value]
        obj = self.materialize(model, id, held[0], held[1])
        return None if obj is None else (obj, held[1])

    def obj(self, model: type[NbModel], id: str) -> NbModel | None:
        """The held object of ``model`` ``id`` (see :meth:`row`), or ``None``."""
        held = self.row(model, id)
        return held[0] if held is not None else None

    def held(self, model: type[NbModel], id: str) -> Held | None:
        """The row of ``model`` ``id`` as stored (nothing is built), or ``None``."""
        rows = self.rows.get(model)
        return rows.get(id) if rows is not None else None

    def materialize(self, model: type[NbModel], id: str, entry: Entry, revision: int) -> NbModel | None:
        """Build the entry held for ``id``: the row holds the object from now on, or is dropped
        when the entry is corrupt (``None``)."""
        assert self.build is not None
        obj = self.build(model, entry)
        current = self.rows[model].get(id)
        if current is not None and current[0] is entry:  # still held: not replaced meanwhile
            if obj is None:
                self.drop(model, id)
            else:
                self.rows[model][id] = (obj, revision)
                unindexed = self._unindexed[model]
                if unindexed and id in unindexed:  # indexed from its object now, cheaper than later
                    self.index(model, id, obj)
        return obj

    def targets(self, model: type[NbModel], held: NbModel | Entry) -> list[tuple[type[NbModel], str]]:
        """The reference targets of a held object or entry (an entry's: among the models held).
        An entry whose JSON is not read exactly is built now (a corrupt one is dropped and
        has none)."""
        if type(held) is Entry:
            reader = self.readers[model]
            reading = reader(held) if reader is not None else None
            if reading is not None:
                return reading[1]
            built = self.materialize(model, held.id, held, held.revision)
            return [] if built is None else reference_targets(built)
        return reference_targets(held)  # type: ignore[arg-type]

    def put_entry(self, model: type[NbModel], entry: Entry, keys: list[Sequence[Hashable]] | None) -> None:
        """Hold ``entry`` unbuilt as a new row (none is held for its id), with its ``keys`` in
        each index as its model's reader read them; ``None``: not read yet (the row is indexed
        by :meth:`index`, at the latest by the first lookup of one of the model's indexes)."""
        keyed = self._keyed[model]
        if keys is None:
            if keyed:
                self._unindexed[model].add(entry.id)
        else:
            for (_, entries), index_keys in zip(keyed, keys, strict=True):
                for key in index_keys:
                    entries[key].add(entry.id)
        self.rows[model][entry.id] = (entry, entry.revision)
        if self._tombstones:
            self._tombstones.pop((model, entry.id), None)

    def put_unread(self, model: type[NbModel], entry: Entry) -> bool:
        """Hold ``entry`` unbuilt and not indexed (as :meth:`put_entry` with no keys) when no
        row of its id is held and no delete at its revision or later is remembered; returns
        whether it did. One call per entry of a sync's listing."""
        rows = self.rows[model]
        id = entry.id
        if id in rows or (self._tombstones and self.is_stale(model, id, entry.revision)):
            return False
        if self._keyed[model]:
            self._unindexed[model].add(id)
        rows[id] = (entry, entry.revision)
        if self._tombstones:
            self._tombstones.pop((model, id), None)
        return True

    def _keys(self, model: type[NbModel], held: NbModel | Entry) -> list[Sequence[Hashable] | set[Hashable]]:
        """The index keys of a held object or entry (an entry is read again, or built when its
        JSON is not read exactly: it was indexed from its object)."""
        if type(held) is Entry:
            reader = self.readers[model]
            reading = reader(held) if reader is not None else None
            if reading is not None:
                return list(reading[0])
            assert self.build is not None
            built = self.build(model, held)
            if built is None:
                return [() for _ in self._keyed[model]]
            held = built
        return [keys(held) for keys, _ in self._keyed[model]]  # type: ignore[arg-type]

    def index(self, model: type[NbModel], id: str, obj: NbModel | None = None) -> None:
        """Add the index keys of ``id``, held and not indexed yet: of ``obj`` (its object, built
        by the caller), else read from its entry, else of its object built now (a corrupt one
        is dropped)."""
        held = self.rows[model][id]
        if obj is None and type(held[0]) is Entry:
            reader = self.readers[model]
            reading = reader(held[0]) if reader is not None else None
            if reading is None:
                obj = self.materialize(model, id, held[0], held[1])
                if obj is None:
                    return  # dropped
            keys = list(reading[0]) if reading is not None else self._keys(model, obj)  # type: ignore[arg-type]
        else:
            keys = self._keys(model, obj if obj is not None else held[0])
        self._unindexed[model].discard(id)
        for (_, entries), index_keys in zip(self._keyed[model], keys, strict=True):
            for key in index_keys:
                entries[key].add(id)

    def index_all(self, model: type[NbModel]) -> None:
        """Index every row of ``model`` not indexed yet."""
        unindexed = self._unindexed[model]
        for id in unindexed.ids():
            if id in unindexed:
                self.index(model, id)
        self._unindexed[model] = Unindexed()  # a set never shrinks: a million ids would stay allocated

    def unindexed(self, model: type[NbModel], id: str) -> bool:
        """Whether ``id`` is held and not indexed yet."""
        return id in self._unindexed[model]

    def is_stale(self, model: type[NbModel], id: str, revision: int) -> bool:
        """Whether the store already holds ``id``, or its delete, at ``revision`` or later."""
        held = self.rows[model].get(id)
        if held is not None and held[1] >= revision:
            return True
        gone = self._tombstones.get((model, id))
        return gone is not None and gone >= revision

    def missing(self, obj: NbModel) -> set[tuple[type[NbModel], str]]:
        """The reference targets of ``obj`` (of the models held here) that are not held."""
        model = type(obj)
        refers = self._refers.get(model)
        if refers is None:
            refers = self._refers[model] = any(target in self.rows for target in references(model))
        if not refers:
            return set()
        rows = self.rows
        return {(target, ref) for target, ref in reference_targets(obj) if target in rows and ref not in rows[target]}

    def put(self, model: type[NbModel], id: str, obj: NbModel, revision: int) -> Held | None:
        """Hold ``obj`` at ``revision``, its index entries following its fields; returns the
        row it replaced."""
        rows = self.rows[model]
        held = rows.get(id)
        unindexed = self._unindexed[model]
        if held is None or (unindexed and id in unindexed):
            unindexed.discard(id)
            for keys, entries in self._keyed[model]:
                for key in keys(obj):
                    entries[key].add(id)
        else:
            held_keys = self._keys(model, held[0])
            for (keys, entries), old in zip(self._keyed[model], held_keys, strict=True):
                old_keys = set(old)
                new_keys = set(keys(obj))
                if old_keys != new_keys:
                    for key in old_keys - new_keys:
                        _discard(entries, key, id)
                    for key in new_keys - old_keys:
                        entries[key].add(id)
        rows[id] = (obj, revision)
        if self._tombstones:
            self._tombstones.pop((model, id), None)
        return held

    def drop(self, model: type[NbModel], id: str) -> Held | None:
        """Drop ``id`` and its index entries; returns the row dropped (as stored)."""
        held = self.rows[model].pop(id, None)
        unindexed = self._unindexed[model]
        if unindexed and id in unindexed:
            unindexed.discard(id)
        elif held is not None:
            for (_, entries), keys in zip(self._keyed[model], self._keys(model, held[0]), strict=True):
                for key in keys:
                    _discard(entries, key, id)
        return held

    def remember_delete(self, model: type[NbModel], id: str, revision: int) -> None:
        """Note that ``id`` was deleted at ``revision`` (the most recent deletes are kept)."""
        self._tombstones[(model, id)] = revision
        if len(self._tombstones) > _TOMBSTONES:
            del self._tombstones[next(iter(self._tombstones))]

    def clear(
        self, models: Iterable[type[NbModel]] | None = None, topic: str | None = None
    ) -> dict[type[NbModel], dict[str, Held]]:
        """Empty the store (tombstones too), or only the rows of ``models`` (of one ``topic``
        when given; their tombstones go when no topic is); returns what it dropped."""
        if models is None and topic is None:
            before = {m: dict(rows) for m, rows in self.rows.items()}
            for model, rows in self.rows.items():
                rows.clear()
                self._unindexed[model] = Unindexed()
                for entries in self._indexes[model].values():
                    entries.clear()
            self._tombstones.clear()
            return before
        chosen = list(self.rows if models is None else models)
        before = {m: {i: r for i, r in self.rows[m].items() if topic is None or r[0].topic == topic} for m in chosen}
        for model, rows in before.items():
            for id in rows:
                self.drop(model, id)
        if topic is None:
            self._tombstones = {k: v for k, v in self._tombstones.items() if k[0] not in before}
        return before

    def lookup(self, model: type[NbModel], index: tuple[str, ...], value: Hashable) -> list[str] | None:
        """The sorted ids whose ``index`` holds ``value`` (``None``: no such index); entries
        held unbuilt among them may still turn out corrupt (:meth:`row` tells)."""
        entries = self._indexes.get(model, {}).get(index)
        if entries is None:
            return None
        if self._unindexed[model]:
            self.index_all(model)
        return sorted(entries.get(value, ()))


class Unindexed:
    """The ids of a model held and not indexed yet: a run of ids added in ascending order (a
    full sync adds its listing's, sorted by id) kept as a list and searched by bisection, the
    ids of it taken out since, and the ids added out of order. A sync of a million objects
    appends to a list instead of building a set of a million ids."""

    __slots__ = ("extra", "run", "start", "taken")

    def __init__(self) -> None:
        self.run: list[str] = []
        """Ids in ascending order; those before ``start`` and those in ``taken`` are out."""
        self.start = 0
        self.taken: set[str] = set()
        """Ids of ``run[start:]`` taken out of order."""
        self.extra: set[str] = set()
        """Ids added out of order."""

    def __len__(self) -> int:
        return len(self.run) - self.start - len(self.taken) + len(self.extra)

    def _in_run(self, id: str) -> bool:
        run, start = self.run, self.start
        if start < len(run) and run[start] == id:
            return True
        i = bisect.bisect_left(run, id, start)
        return i < len(run) and run[i] == id

    def __contains__(self, id: object) -> bool:
        if type(id) is not str:
            return False
        if id in self.extra:
            return True
        return self._in_run(id) and id not in self.taken

    def add(self, id: str) -> None:
        """Put ``id`` in: at the end of the run when it sorts after it (a listing sorted by id:
        no set of a million ids to build), else among the ids added out of order."""
        run = self.run
        if not run or id > run[-1]:
            run.append(id)
        else:
            self.extra.add(id)

    def discard(self, id: str) -> None:
        """Take ``id`` out (nothing when it is not in)."""
        self.extra.discard(id)
        if not self._in_run(id):
            return
        run, taken = self.run, self.taken
        if run[self.start] != id:
            taken.add(id)
            return
        start = self.start + 1
        while taken and start < len(run) and run[start] in taken:
            taken.discard(run[start])
            start += 1
        self.start = start

    def ids(self) -> list[str]:
        """The ids in, at the time of the call."""
        taken = self.taken
        return [id for id in itertools.islice(self.run, self.start, None) if id not in taken] + list(self.extra)


def _path_values(value: object, parts: Sequence[str]) -> list[Hashable]:
    """The values at a dotted path; lists along the way fan out, ``None`` yields nothing."""
    current = _fan_out(value)
    for part in parts:
        current = [x for v in current for x in _fan_out(getattr(v, part, None))]
    return [v for v in current if isinstance(v, Hashable)]


def _fan_out(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, _COLLECTIONS):
        return [x for item in value for x in _fan_out(item)]
    return [value]


def _flat(values: Iterable[object]) -> list[Hashable]:
    """The hashable elements of a collection, nested collections flattened, ``None`` left out."""
    out: list[Hashable] = []
    for item in values:
        if item is None:
            continue
        if isinstance(item, _COLLECTIONS):
            out += _flat(item)
        elif type(item).__hash__ is not None:  # as isinstance(item, Hashable), without the ABC's cost
            out.append(item)
    return out


def keys_of(index: tuple[str, ...]) -> KeysOf:
    """The function giving an object's keys in ``index`` (see :func:`index_keys`), made once
    per index: a plain field and a dotted path are read without the general machinery."""
    paths = tuple(tuple(path.split(".")) for path in index)
    if len(paths) == 1:
        first, rest = paths[0][0], paths[0][1:]

        def one(obj: NbModel) -> Sequence[Hashable]:
            value = getattr(obj, first, None)
            if value is None:
                return ()
            if rest:
                return _path_values(value, rest)
            if isinstance(value, _COLLECTIONS):
                return _flat(value)
            return (value,) if type(value).__hash__ is not None else ()

        return one

    def combined(obj: NbModel) -> set[Hashable]:
        return set(itertools.product(*(_path_values(obj, path) for path in paths)))

    return combined


def index_keys(obj: NbModel, index: tuple[str, ...]) -> set[Hashable]:
    """The keys ``obj`` has in ``index``: a field's value, each element of a list field, a
    tuple per combination for a multi-field index."""
    return set(keys_of(index)(obj))


def _discard(entries: defaultdict[Hashable, set[str]], key: Hashable, id: str) -> None:
    ids = entries.get(key)
    if ids is not None:
        ids.discard(id)
        if not ids:
            del entries[key]
