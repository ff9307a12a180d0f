"""Repair of an etcd object whose index key another program rewrote beyond reading: its
data keys are found by a scan, so that ``put`` can replace it and ``delete`` remove it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aetcd import rpc

from dfdb.drivers.base import Entry
from dfdb.drivers.etcd_watchers import _range_end
from dfdb.errors import ConflictError

if TYPE_CHECKING:
    from dfdb.drivers.etcd import EtcdDriver

__all__ = ["delete_unreadable", "readable", "replace_unreadable"]

log = logging.getLogger(__name__)


def readable(kv: Any) -> bool:
    """Whether an index key's value is dfdb's: ``LOC\\nVALUE``."""
    location, sep, _ = bytes(kv.value).partition(b"\n")
    return bool(sep) and (location == b"n" or location.startswith(b"t/"))


async def data_of(driver: EtcdDriver, table: str, id: str) -> list[tuple[str | None, Any]]:
    """(topic, key-value) of every data key of (table, id), found by a scan of all data keys."""
    found: list[tuple[str | None, Any]] = []
    prefix, revision = driver._key("d") + b"/", 0
    key, end = prefix, _range_end(prefix)
    while True:
        reply = await driver._range(key, end, limit=driver.page, revision=revision)
        revision = revision or int(reply.header.revision)
        for kv in reply.kvs:
            parsed = driver._parse_data_key(bytes(kv.key))
            if parsed is not None and (parsed[0], parsed[2]) == (table, id):
                found.append((parsed[1], kv))
        if not reply.more or not reply.kvs:
            return found
        key = bytes(reply.kvs[-1].key) + b"\x00"


def _unchanged(index: Any, data: list[tuple[str | None, Any]]) -> list[Any]:
    """Compares that hold while the index key and the data keys found are as read."""
    return [
        rpc.Compare(key=kv.key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=kv.mod_revision)
        for kv in [index, *(kv for _, kv in data)]
    ]


async def replace_unreadable(
    driver: EtcdDriver, table: str, id: str, topic: str | None, puts: list[Any], index: Any
) -> int:
    """``put`` (any expectation) over the unreadable index key ``index`` when no data key
    exists under ``topic``; its revision.

    Raises:
        ValueError: a data key of the object exists under another topic (topics are fixed).
        ConflictError: a key changed meanwhile (the caller reads again).
    """
    data = await data_of(driver, table, id)
    if data:
        raise ValueError(f"{table}/{id} belongs to topic {data[0][0]!r}, not {topic!r}")
    reply = await driver._txn(_unchanged(index, data), puts, [])
    if not reply.succeeded:
        raise ConflictError(f"{table}/{id} changed while its unreadable index key was replaced")
    log.warning("replaced %s/%s, whose index key was not dfdb's", table, id)
    return int(reply.header.revision)


async def delete_unreadable(driver: EtcdDriver, table: str, id: str) -> Entry | None:
    """``delete`` of an object whose index key cannot be read, with every data key a scan
    finds; ``None`` when a key changed meanwhile (or the index key is gone: read again)."""
    reply = await driver._range(driver._index_key(table, id))
    if not reply.kvs:
        return None
    index = reply.kvs[0]
    data = await data_of(driver, table, id)
    keys = [index.key, *(kv.key for _, kv in data)]
    deletes = [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)) for key in keys]
    done = await driver._txn(_unchanged(index, data), deletes, [])
    if not done.succeeded:
        return None
    log.warning("deleted %s/%s, whose index key was not dfdb's", table, id)
    topic, value = (data[0][0], bytes(data[0][1].value)) if data else (None, b"")
    return Entry(table, id, topic, value, int(done.header.revision))
