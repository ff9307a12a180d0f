"""A driver's ``Entry`` stays a frozen value whatever builds it."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from dfdb.drivers.base import Entry


def test_an_entry_is_a_frozen_value() -> None:
    entry = Entry("t", id="i", topic=None, value=b"v", revision=3)
    assert (entry.table, entry.id, entry.topic, entry.value, entry.revision) == ("t", "i", None, b"v", 3)
    assert entry == Entry("t", "i", None, b"v", 3) and hash(entry) == hash(Entry("t", "i", None, b"v", 3))
    assert entry != Entry("t", "i", "x", b"v", 3)
    assert pickle.loads(pickle.dumps(entry)) == entry
    assert repr(entry) == "Entry(table='t', id='i', topic=None, value=b'v', revision=3)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.id = "j"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Entry("t", "i", None, b"v")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Entry("t", "i", None, b"v", 3, extra=1)  # type: ignore[call-arg]
