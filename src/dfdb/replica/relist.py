"""Relisting a Replica's scope: the listings of a scope (all of it, or the part a ``RESYNC``
names) and the events that tell the difference between the old contents and the new."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence

from dfdb._collector import collector_paused
from dfdb.codec import decode
from dfdb.drivers.base import Entry
from dfdb.errors import BackendTimeoutError, BackendUnavailableError, CorruptObjectError, NotFoundError
from dfdb.events import Action, format_cursor, parse_cursor
from dfdb.nb import ListResult, NbApi, revision_of
from dfdb.nbmodel import NbModel
from dfdb.replica.events import EventFlow, ReplicaEvent
from dfdb.replica.lazy import list_raw
from dfdb.replica.store import Held, Row
from dfdb.retry import Backoff

__all__ = [
    "Keys", "Listings", "emit_difference", "kept_only", "list_changed", "list_scope", "note_relisted", "refetch",
    "until_done",
]  # fmt: skip

log = logging.getLogger("dfdb.nb")

Listings = list[tuple[type[NbModel], ListResult[NbModel]]]
"""Listings of a scope, by model."""
Keys = set[tuple[type[NbModel], str]]
"""Keys of held objects."""


async def list_scope(
    nb: NbApi,
    models: Sequence[type[NbModel]],
    topics: Collection[str] | None,
    topicless: Collection[type[NbModel]] = (),
) -> Listings:
    """The listings of ``models``: every object (``topics`` ``None``), or those of ``topics``
    plus a whole listing of each model of ``topicless`` for its topic-less objects (the
    caller filters the rest out)."""
    listings: Listings = []
    raw = await list_raw(nb, models, topics, topicless)
    with collector_paused():  # every object built stays (see fill_raw)
        for model, entries, cursor in raw:
            items: list[NbModel] = []
            corrupt: list[str] = []
            for entry in entries:
                try:
                    items.append(decode(model, entry.id, entry.topic, entry.value, entry.revision))
                except CorruptObjectError as exc:
                    log.warning("skipping %s", exc)
                    corrupt.append(entry.id)
            listings.append((model, ListResult(items, cursor, corrupt)))
    return listings


FEW = 32
"""Values a relist by keys reads one by one at least before a whole listing is taken as
cheaper (and an eighth of the scope's keys above that)."""


async def list_changed(
    nb: NbApi,
    models: Sequence[type[NbModel]],
    topics: Collection[str] | None,
    topicless: Collection[type[NbModel]],
    held: dict[type[NbModel], dict[str, Held]],
    dataset: str,
) -> tuple[Listings, int] | None:
    """The listings of the scope as :func:`list_scope` makes them and the values it read,
    reading only the values whose revision differs from the rows ``held``: each model's ids
    and revisions come from :meth:`Driver.digest_keys` (no values, where the driver can), a
    held object at the revision stored is the object stored (a revision names one write of
    the dataset ``dataset`` the rows were held from, so the dataset is read with the keys or
    after them), and the rest is read one by one.

    ``None`` when a whole listing is cheaper (more differ than :data:`FEW` and an eighth of
    the keys, or the driver read the values to know the keys) or the keys come from another
    dataset than ``dataset``: the caller lists."""
    listings: Listings = []
    read = 0
    unnamed = False  # a driver that reads no identity with the keys: it is read after them
    for model in models:
        table = model.__table__
        scope = None if topics is None else {*topics, *([None] if model in topicless else [])}
        keys = await nb._retry(functools.partial(nb.driver.digest_keys, table, scope, 1, (0,)), "list", table)
        unnamed = unnamed or not keys.identity
        if (keys.identity or dataset) != dataset or keys.values_read:  # values read: a listing costs no more
            return None
        rows = held.get(model, {})
        same = [rows[id][0] for id, rev in keys.revisions.items() if id in rows and rows[id][1] == rev]
        differ = sorted(id for id, rev in keys.revisions.items() if id not in rows or rows[id][1] != rev)
        if len(differ) > max(FEW, len(keys.revisions) // 8):
            return None
        items: list[NbModel] = []
        corrupt: list[str] = []
        for held_obj in same:
            obj = _decoded(model, held_obj, corrupt)  # held as stored (an Entry), or built
            if obj is not None:
                items.append(obj)
        for id in differ:
            try:
                entry = await nb._retry(functools.partial(nb.driver.get, table, id), "get", table)
            except CorruptObjectError as exc:
                log.warning("skipping %s", exc)
                corrupt.append(id)
                continue
            read += 1
            found = _decoded(model, entry, corrupt) if entry is not None else None
            if found is not None and (scope is None or found.topic in scope):  # else gone since, or moved away
                items.append(found)
        items.sort(key=_id_of)
        listings.append((model, ListResult(items, format_cursor(dataset, keys.revision), corrupt)))
    # the identity known before may be a lost dataset's: one lost meanwhile has another by now
    if unnamed and await nb._retry(nb.driver.identity, "list", models[0].__table__) != dataset:
        return None
    return listings, read


def _decoded(model: type[NbModel], entry: NbModel | Entry, corrupt: list[str]) -> NbModel | None:
    if type(entry) is not Entry:
        return entry  # type: ignore[return-value]
    try:
        return decode(model, entry.id, entry.topic, entry.value, entry.revision)
    except CorruptObjectError as exc:
        log.warning("skipping %s", exc)
        corrupt.append(entry.id)
        return None


def _id_of(obj: NbModel) -> str:
    return obj.id


def kept_only(listings: Listings, partial: Collection[str], held: dict[type[NbModel], dict[str, Row]]) -> Listings:
    """``listings`` without the objects of the ``partial`` topics (removed, their referenced
    objects kept) that were not ``held`` before the relist: of those topics a relist
    refreshes only the objects kept."""
    if not partial:
        return listings
    kept: Listings = []
    for model, listing in listings:
        was = held.get(model, {})
        items = [obj for obj in listing.items if obj.topic not in partial or obj.id in was]
        kept.append((model, ListResult(items, listing.cursor, listing.corrupt)))
    return kept


async def refetch(
    nb: NbApi,
    before: dict[type[NbModel], dict[str, Row]],
    apply: Callable[[type[NbModel], str, NbModel | None, int], None],
) -> None:
    """After a ``RESYNC`` in REACTIVE mode: fetch again what was held, and ``apply`` it."""
    for model, rows in before.items():
        for id in rows:
            with contextlib.suppress(NotFoundError):
                obj = await nb.get(model, id)
                apply(model, id, obj, revision_of(obj) or 0)


async def until_done(call: Callable[[], Awaitable[None]], what: str) -> None:
    """``await call()``, again after a jittered, growing backoff while the server cannot be
    reached or does not answer in time: a relist that failed must not be forgotten, or the
    scope would stay stale while the Replica follows its stream as if whole."""
    backoff = Backoff(maximum=5.0)
    attempt = 0
    while True:
        try:
            await call()
            return
        except (BackendUnavailableError, BackendTimeoutError) as exc:
            await backoff.pause(attempt, what, exc)
            attempt += 1


def emit_difference(
    flow: EventFlow,
    before: dict[type[NbModel], dict[str, Row]],
    now_rows: dict[type[NbModel], dict[str, Row]],
    topic: str | None,
    corrupt: Keys,
    position: int,
) -> int:
    """Emit the events from the rows ``before`` a relist to the rows held now (of ``topic``
    when the relist covered one topic); returns how many keys went because their stored
    value is corrupt."""
    bad_count = 0
    for model, rows in before.items():
        now = {i: r for i, r in now_rows[model].items() if topic is None or r[0].topic == topic}
        for id, (old, _) in rows.items():
            if id not in now:
                bad = (model, id) in corrupt  # still stored, not valid (the listing logged it)
                bad_count += bad
                flow.emit(ReplicaEvent(Action.DELETE, model, id, old, None, position, bad))
            elif now[id][0] != old:
                flow.emit(ReplicaEvent(Action.UPDATE, model, id, old, now[id][0], now[id][1]))
        for id, (obj, rev) in now.items():
            if id not in rows:
                flow.emit(ReplicaEvent(Action.CREATE, model, id, None, obj, rev))
    return bad_count


def note_relisted(
    relisted: dict[tuple[type[NbModel], str | None], int], dataset: str, listings: Listings, topic: str | None
) -> str:
    """Remember in ``relisted`` up to which revision each relisted model (of ``topic``;
    ``None``: every topic) is as listed: the stream's changes at or below it that arrive after
    the relist are older than the listing (a snapshot poller's, or a stream reopened behind
    it). ``dataset``: the one those revisions are of; returns the one they are of now."""
    listed: dict[type[NbModel], int] = {}
    for model, listing in listings:
        identity, at = parse_cursor(listing.cursor)
        if identity != dataset:  # another dataset's revisions say nothing of this one's
            relisted.clear()
            dataset = identity
        listed[model] = min(listed.get(model, at), at)
    for model, at in listed.items():
        if topic is None:  # every topic of the model: the older marks of single topics are moot
            for key in [k for k, v in relisted.items() if k[0] is model and v <= at]:
                del relisted[key]
        relisted[(model, topic)] = max(relisted.get((model, topic), 0), at)
    return dataset
