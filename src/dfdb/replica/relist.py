"""Relisting a Replica's scope: the listings of a scope (all of it, or the part a ``RESYNC``
names) and the events that tell the difference between the old contents and the new."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence

from dfdb._collector import collector_paused
from dfdb.codec import decode
from dfdb.errors import BackendTimeoutError, BackendUnavailableError, CorruptObjectError, NotFoundError
from dfdb.events import Action
from dfdb.nb import ListResult, NbApi, revision_of
from dfdb.nbmodel import NbModel
from dfdb.replica.events import EventFlow, ReplicaEvent
from dfdb.replica.lazy import list_raw
from dfdb.replica.store import Row
from dfdb.retry import Backoff

__all__ = ["Keys", "Listings", "emit_difference", "kept_only", "list_scope", "refetch", "until_done"]

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
