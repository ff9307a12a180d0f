"""Relisting a Replica's scope: the listings of a scope (all of it, or the part a ``RESYNC``
names) and the events that tell the difference between the old contents and the new."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING

import anyio

from dfdb._collector import collector_paused
from dfdb.codec import decode
from dfdb.errors import BackendTimeoutError, BackendUnavailableError, CorruptObjectError, NotFoundError
from dfdb.events import Action, format_cursor, parse_cursor
from dfdb.nb import ListResult, NbApi, revision_of
from dfdb.nbmodel import NbModel
from dfdb.replica.events import EventFlow, ReplicaEvent
from dfdb.replica.lazy import list_raw
from dfdb.replica.store import Held, Row
from dfdb.retry import Backoff

if TYPE_CHECKING:
    from dfdb.replica.core import Replica

__all__ = [
    "Changes", "Keys", "Listings", "apply_changed", "emit_difference", "end_when_closed", "kept_only", "list_changed",
    "list_scope",
    "note_relisted", "refetch", "until_done",
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


Changes = list[tuple[type[NbModel], int, list[tuple[str, NbModel | None, int]]]]
"""What a relist by keys found, by model: the revision its keys reflect, and each id whose
object differs from the one held: the object stored (``None``: gone from the scope) at a
revision."""


async def list_changed(
    nb: NbApi,
    models: Sequence[type[NbModel]],
    topics: Collection[str] | None,
    topicless: Collection[type[NbModel]],
    held: dict[type[NbModel], dict[str, Held]],
    dataset: str,
    kept: Collection[str] = (),
) -> tuple[Changes, int] | None:
    """What differs between the scope stored and the rows ``held``, and the values read to
    know it: every model's ids and revisions come from one :meth:`Driver.digest_keys_many`
    (no values, where the driver can), a held row at the revision stored is the object
    stored (a revision names one write of the dataset ``dataset`` the rows were held from,
    so the dataset is read with the keys or after them) and is not looked at, and the
    objects of the other ids are read one by one; a held row of the scope whose id is not stored is gone. Of the
    ``kept`` topics (removed, their referenced objects kept) only the objects held count.

    ``None`` when a whole listing is cheaper (more differ than :data:`FEW` and an eighth of
    the keys, or the driver read the values to know the keys), a value is corrupt (the
    listing reports it), or the keys come from another dataset than ``dataset``: the caller
    lists."""
    changes: Changes = []
    read = 0
    unnamed = False  # a driver that reads no identity with the keys: it is read after them
    scopes = {m.__table__: None if topics is None else {*topics, *([None] if m in topicless else [])} for m in models}
    every = await nb._retry(functools.partial(nb.driver.digest_keys_many, scopes), "list", models[0].__table__)
    for model in models:
        table = model.__table__
        scope, keys = scopes[table], every[table]
        unnamed = unnamed or not keys.identity
        if (keys.identity or dataset) != dataset or keys.values_read:  # values read: a listing costs no more
            return None
        rows = held.get(model, {})
        stored = keys.revisions
        differ = sorted(id for id, rev in stored.items() if id not in rows or rows[id][1] != rev)
        if len(differ) > max(FEW, len(stored) // 8):
            return None
        found: list[tuple[str, NbModel | None, int]] = [
            (id, None, keys.revision)
            for id, (row, _) in rows.items()
            if id not in stored and (scope is None or row.topic in scope)
        ]
        for id in differ:
            try:
                entry = await nb._retry(functools.partial(nb.driver.get, table, id), "get", table)
                obj = None if entry is None else decode(model, entry.id, entry.topic, entry.value, entry.revision)
            except CorruptObjectError:
                return None
            read += 1
            if obj is not None and obj.topic in kept and id not in rows:
                continue  # a removed topic's object not held: not loaded again
            if obj is None or (scope is not None and obj.topic not in scope):  # gone since, or moved away
                found.append((id, None, keys.revision if obj is None else revision_of(obj) or keys.revision))
            else:
                found.append((id, obj, revision_of(obj) or 0))
        changes.append((model, keys.revision, found))
    # the identity known before may be a lost dataset's: one lost meanwhile has another by now
    if unnamed and await nb._retry(nb.driver.identity, "list", models[0].__table__) != dataset:
        return None
    return changes, read


def apply_changed(replica: Replica, changes: Changes, *, whole: bool, topic: str | None) -> None:
    """Apply what a relist by keys found to ``replica``, with no await, each change with its
    event (the rows as stored stay as they are: not built, nothing to tell); the revisions
    its keys reflect are noted as a listing's (:func:`note_relisted`); ``whole``: they cover
    the scope, a position. A relist of one ``topic`` deletes what left it at the revision
    held (plus one): a change of another topic that brought it there is applied after."""
    for model, _, found in changes:
        for id, obj, revision in found:
            if obj is None and topic is not None:
                # gone from the topic, maybe to another one followed, whose change comes by the
                # stream (this topic's older ones are masked): no delete remembered past the row's
                held = replica._store.row(model, id)
                if held is None:
                    continue
                revision = held[1] + 1
            replica._apply(model, id, obj, revision)
    listings: Listings = [(m, ListResult([], format_cursor(replica._dataset, at))) for m, at, _ in changes]
    if whole and changes:
        replica._position = max(replica._position, min(at for _, at, _ in changes))
    replica._relisted_in = note_relisted(replica._relisted, replica._relisted_in, listings, topic)
    replica.resyncs += 1


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


async def refetch(nb: NbApi, rows: dict[type[NbModel], dict[str, Held]]) -> list[tuple[type[NbModel], NbModel, int]]:
    """After a ``RESYNC`` in REACTIVE mode: what to hold, read again (nothing is applied, so
    a relist failing part way changes nothing): each object of the store's ``rows`` that
    still exists, and the objects a reader's fetch added meanwhile (read after the ``RESYNC``)."""
    held = {model: list(ids) for model, ids in rows.items()}
    found: list[tuple[type[NbModel], NbModel, int]] = []
    for model, ids in held.items():
        for id in ids:
            with contextlib.suppress(NotFoundError):
                obj = await nb.get(model, id)
                found.append((model, obj, revision_of(obj) or 0))
    for model, now in rows.items():
        was = set(held[model])
        found += [(model, obj, rev) for id, (obj, rev) in now.items() if id not in was and isinstance(obj, NbModel)]
    return found


async def end_when_closed(nb: NbApi, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` once ``nb`` is closed (polled: it has no event for it)."""
    while nb._state != "closed":  # noqa: ASYNC110
        await anyio.sleep(0.1)
    scope.cancel()


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
