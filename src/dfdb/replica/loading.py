"""A Replica's lazy load (see :mod:`~dfdb.replica.lazy`): entries held unbuilt, validated in
the background afterwards, built when a relist replaces them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio.lowlevel

from dfdb._collector import collector_paused
from dfdb.codec import decode
from dfdb.drivers.base import Entry
from dfdb.errors import CorruptObjectError
from dfdb.events import parse_cursor
from dfdb.nbmodel import NbModel
from dfdb.replica.lazy import RawListings, refers_held
from dfdb.replica.store import Held, Row

if TYPE_CHECKING:
    from dfdb.replica.core import Replica

__all__ = ["built", "fill_raw", "validate_held"]

log = logging.getLogger("dfdb.replica.core")

SLICE = 200
"""Entries validated in the background between two yields to other tasks (a few milliseconds)."""


def fill_raw(replica: Replica, listings: RawListings, topics: set[str] | None) -> None:
    """Apply stored entries of the whole scope to the store, with no await and the garbage
    collector paused (:mod:`dfdb._collector`): each new key whose value its model's reader
    reads is held unbuilt (its event only counted: nobody listens), any other is decoded and
    applied as by :meth:`Replica._fill`."""
    with collector_paused():
        _fill_raw(replica, listings, topics)


def _fill_raw(replica: Replica, listings: RawListings, topics: set[str] | None) -> None:
    store, flow = replica._store, replica._flow
    lazy = 0
    held = frozenset(store.rows)
    if listings:  # together they cover the scope up to the oldest one (see Replica._fill)
        replica._position = max(replica._position, min(parse_cursor(cursor)[1] for _, _, cursor in listings))
    for model, entries, _ in listings:
        reader = store.readers[model]
        rows = store.rows[model]
        parse = refers_held(model, held) and flow.defer
        unread = reader is not None and not parse
        for entry in entries:
            if topics is not None and entry.topic is not None and entry.topic not in topics:
                continue
            if unread and store.put_unread(model, entry):  # indexed later (no reference to wait for)
                if flow.waits():
                    flow.applied((model, entry.id))
                else:
                    flow.emitted += 1
                lazy += 1
                continue
            if store.is_stale(model, entry.id, entry.revision):
                continue  # listed twice (a topic's listing and the topic-less one)
            reading = reader(entry) if reader is not None and entry.id not in rows else None
            if reading is not None:
                keys, targets = reading
                if not flow.defer or all(ref in store.rows[target] for target, ref in targets):
                    store.put_entry(model, entry, keys)
                    flow.applied((model, entry.id))
                    lazy += 1
                    continue
            try:
                obj = decode(model, entry.id, entry.topic, entry.value, entry.revision)
            except CorruptObjectError as exc:
                log.warning("skipping %s", exc)
                replica._checker.known_corrupt(model, entry.id, entry.revision, entry.topic)
                continue
            replica._apply(model, entry.id, obj, entry.revision)
    if lazy:
        replica._validated.clear()


async def validate_held(replica: Replica) -> None:
    """Validate the entries held unbuilt, a slice at a time between yields to other tasks,
    indexing those not indexed yet from their objects; a corrupt one is reported and dropped
    (:meth:`Replica._build`). Valid ones stay unbuilt: an object costs several times its
    stored value in memory."""
    store = replica._store
    for model in replica.models:
        pending = [id for id, (held, _) in store.rows[model].items() if type(held) is Entry]
        for start in range(0, len(pending), SLICE):
            await anyio.lowlevel.checkpoint()
            rows = store.rows[model]
            for id in pending[start : start + SLICE]:
                row = rows.get(id)
                if row is None or type(row[0]) is not Entry:
                    continue
                obj = replica._build(model, row[0])
                if obj is None:
                    store.drop(model, id)
                elif store.unindexed(model, id):
                    store.index(model, id, obj)
        store.index_all(model)
    replica._validated.set()


def built(replica: Replica, rows: dict[type[NbModel], dict[str, Held]]) -> dict[type[NbModel], dict[str, Row]]:
    """``rows`` with the entries held unbuilt built (corrupt ones reported and left out)."""
    done: dict[type[NbModel], dict[str, Row]] = {}
    for model, held in rows.items():
        done[model] = out = {}
        for id, (obj, rev) in held.items():
            new = replica._build(model, obj) if type(obj) is Entry else obj
            if new is not None:
                out[id] = (new, rev)
    return done
