"""Conformance tests of batches: ``create_many`` and ``update_many`` naming one object twice."""

from __future__ import annotations

import dfdb
from dfdb import NbApi
from dfdb.testing.conformance import ConformanceItem, conformance_test

__all__ = ["test_a_batch_naming_an_object_twice_applies_the_first"]


@conformance_test
async def test_a_batch_naming_an_object_twice_applies_the_first(nb: NbApi) -> None:
    """Writes of one batch that name the same object are applied in the batch's order, as
    separate calls would be: the first one wins, the later ones are refused as they would
    be after it (``AlreadyExistsError``, ``ConflictError``), on every backend."""
    for attempt in range(5):  # a backend that runs a batch's writes at once orders them by chance
        key = f"twice{attempt}"
        created = await nb.create_many(
            [ConformanceItem(id=key, n=1), ConformanceItem(id="other", n=attempt), ConformanceItem(id=key, n=2)]
        )
        assert isinstance(created[0], ConformanceItem) and created[0].n == 1, created
        assert isinstance(created[2], dfdb.AlreadyExistsError), created
        first = created[0]
        updated = await nb.update_many([first.model_copy(update={"n": n}) for n in (10, 20, 30)])
        assert isinstance(updated[0], ConformanceItem) and updated[0].version == 2, updated
        assert [type(u) for u in updated[1:]] == [dfdb.ConflictError, dfdb.ConflictError], updated
        stored = await nb.get(ConformanceItem, key)
        assert (stored.n, stored.version) == (10, 2)
        built = [ConformanceItem(id=key, version=2, n=n) for n in (40, 50)]  # not read: update() reads each
        updated = await nb.update_many([*built, stored.model_copy(update={"n": 60})])
        assert [u.n if isinstance(u, ConformanceItem) else type(u) for u in updated] == [
            40,
            dfdb.ConflictError,
            dfdb.ConflictError,
        ], updated
        assert (await nb.get(ConformanceItem, key)).n == 40
        await nb.delete(ConformanceItem, "other")
