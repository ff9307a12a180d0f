"""Conformance tests of liveness (guarantee 12): leases, expiry deletes, fenced locks.

Every test skips on a driver without :attr:`~dfdb.drivers.Capability.LEASES`, and on a
URL with ``notifications=poll`` (the same driver is tested with its native stream).
"""

from __future__ import annotations

import anyio
import pytest

import dfdb
import dfdb.drivers
from dfdb import Action, NbApi
from dfdb.drivers import Guard
from dfdb.testing.conformance import ConformanceItem, conformance_test, next_event

__all__ = [
    "EXPIRY_SLACK",
    "test_guarded_write_is_refused_once_the_lock_moved_on",
    "test_lease_bad_input_is_refused_clearly",
    "test_lease_expiry_is_delivered_as_expired_deletes",
    "test_lease_lost_is_reported_and_refuses_writes",
    "test_lease_revoke_deletes_its_objects",
    "test_lock_excludes_a_second_holder",
]

EXPIRY_SLACK = 2.0
"""Seconds after a lease's TTL by which its expiry deletes must have reached a watcher."""


def _leases_or_skip(nb: NbApi) -> None:
    if not nb.driver.capabilities & dfdb.drivers.Capability.LEASES:
        pytest.skip(f"the {nb.url.scheme}:// driver has no leases")
    if nb.notifications == "poll":
        pytest.skip("leases do not depend on how changes are read: tested with the native stream")


@conformance_test
async def test_lease_expiry_is_delivered_as_expired_deletes(exact_nb: NbApi) -> None:
    nb = exact_nb
    _leases_or_skip(nb)
    async with nb.watch(ConformanceItem) as stream:
        async with nb.lease(ttl=1) as kept, nb.lease(ttl=1, keepalive=False) as dying:
            granted = anyio.current_time()
            await nb.create(ConformanceItem(id="free"))
            await nb.create(ConformanceItem(id="kept"), lease=kept)
            bound = [await nb.create(ConformanceItem(id=f"e{i}", n=i), lease=dying) for i in range(3)]
            await nb.update(bound[0].model_copy(update={"n": 10}), lease=dying)  # still bound
            assert [(await next_event(stream)).id for _ in range(6)] == ["free", "kept", "e0", "e1", "e2", "e0"]
            deletes = [await next_event(stream, within=1 + EXPIRY_SLACK + 1) for _ in range(3)]
            seen = anyio.current_time() - granted
            assert seen <= 1 + EXPIRY_SLACK, f"expiry seen {seen:.2f}s after the grant of a 1s lease"
            expected = [(Action.DELETE, f"e{i}", True) for i in range(3)]
            got = sorted((ev.action, ev.id, ev.expired) for ev in deletes)
            assert got == expected, f"expected the expiry deletes {expected}, got {got}"
            revisions = [ev.revision for ev in deletes]
            assert revisions == sorted(revisions)  # in order (etcd ends a lease's objects in one revision)
            assert dying.lost or (await _refused(nb, dying))
            assert {o.id for o in await nb.get_all(ConformanceItem)} == {"free", "kept"}  # the kept lease lived on
            assert not kept.lost
        # leaving the block revokes the kept lease: its object goes as an expiry too
        ev = await next_event(stream)
        assert (ev.action, ev.id, ev.expired) == (Action.DELETE, "kept", True)
        await nb.delete(ConformanceItem, "free")
        ev = await next_event(stream)
        assert (ev.action, ev.id, ev.expired) == (Action.DELETE, "free", False)


async def _refused(nb: NbApi, lease: dfdb.Lease) -> bool:
    with pytest.raises(dfdb.LeaseLostError):
        await nb.create(ConformanceItem(id="late"), lease=lease)
    return True


@conformance_test
async def test_lease_revoke_deletes_its_objects(nb: NbApi) -> None:
    _leases_or_skip(nb)
    async with nb.lease(ttl=30) as lease:
        await nb.create(ConformanceItem(id="a"), lease=lease)
        b = await nb.create(ConformanceItem(id="b"), lease=lease)
        await nb.update(b.model_copy(update={"n": 1}))  # rewritten without the lease: unbound
        await lease.revoke()
        assert lease.lost
        await lease.lost  # returns at once
        with pytest.raises(dfdb.NotFoundError):
            await nb.get(ConformanceItem, "a")
        assert (await nb.get(ConformanceItem, "b")).n == 1
        with pytest.raises(dfdb.LeaseLostError):
            await nb.create(ConformanceItem(id="c"), lease=lease)
        with pytest.raises(dfdb.LeaseLostError):
            await nb.put(ConformanceItem(id="b", n=2), guard=lease)
    assert (await nb.get(ConformanceItem, "b")).n == 1
    assert await nb.get_all(ConformanceItem) == [await nb.get(ConformanceItem, "b")]


@conformance_test
async def test_lease_lost_is_reported_and_refuses_writes(nb: NbApi) -> None:
    _leases_or_skip(nb)
    async with nb.lease(ttl=1) as lease:
        await nb.create(ConformanceItem(id="a"), lease=lease)
        assert lease.id is not None
        await nb.driver.lease_revoke(lease.id)  # ended behind the holder's back (as a reaper would)
        with anyio.fail_after(5):
            await lease.lost  # the next keep-alive finds out
        assert isinstance(lease.error, dfdb.LeaseLostError)
        with pytest.raises(dfdb.LeaseLostError):
            await nb.create(ConformanceItem(id="b"), lease=lease)
        with pytest.raises(dfdb.LeaseLostError):  # the backend refuses too, whatever the holder believes
            await nb.driver.put_bound(ConformanceItem.__table__, "b", None, b"{}", dfdb.drivers.ABSENT, lease.id, None)
        with pytest.raises(dfdb.LeaseLostError):
            await nb.driver.lease_keepalive(lease.id)
    assert await nb.get_all(ConformanceItem) == []


@conformance_test
async def test_guarded_write_is_refused_once_the_lock_moved_on(nb: NbApi) -> None:
    _leases_or_skip(nb)
    table = ConformanceItem.__table__
    item = await nb.create(ConformanceItem(id="counter"))
    async with nb.lock("lk", ttl=5) as first:
        item = await nb.update(item.model_copy(update={"n": 1}), guard=first)
        old = Guard(first.lease.check(), "lk", first.token)
        await nb.driver.lease_revoke(old.lease)  # the holder's lease ends (it was paused past its TTL)
        async with nb.lock("lk", ttl=5, timeout=5) as second:
            assert second.token > first.token
            with pytest.raises(dfdb.LeaseLostError):  # the backend's own check, in the write's atomic step
                await nb.driver.put_bound(table, "counter", None, b"{}", dfdb.drivers.ANY, None, old)
            with pytest.raises(dfdb.LeaseLostError):
                await nb.driver.delete_guarded(table, "counter", old)
            with pytest.raises(dfdb.LeaseLostError):
                await nb.update(item.model_copy(update={"n": 99}), guard=first)
            item = await nb.update(item.model_copy(update={"n": 2}), guard=second)
            stale = Guard(second.check().lease, "lk", first.token)
            with pytest.raises(dfdb.LeaseLostError):  # a stale token on a live lease is refused too
                await nb.driver.put_bound(table, "counter", None, b"{}", dfdb.drivers.ANY, None, stale)
    assert (await nb.get(ConformanceItem, "counter")).n == 2
    async with nb.lock("lk", ttl=5) as third:
        assert third.token > second.token
        await nb.delete(ConformanceItem, "counter", guard=third)
    assert await nb.get_all(ConformanceItem) == []


@conformance_test
async def test_lock_excludes_a_second_holder(nb: NbApi) -> None:
    _leases_or_skip(nb)
    async with nb.lock("excl", ttl=5) as held:
        with pytest.raises(dfdb.LockedError):
            async with nb.lock("excl", ttl=5, timeout=0.3):
                pytest.fail("a second holder got the lock")
        assert not held.lost
        async with nb.lock("other", ttl=5) as other:  # another name is another lock
            assert other.token >= 1
    async with nb.lock("excl", ttl=5, timeout=5) as next_holder:  # released at the end of the block
        assert next_holder.token > held.token


@conformance_test
async def test_lease_bad_input_is_refused_clearly(nb: NbApi) -> None:
    _leases_or_skip(nb)
    for ttl in (0, -1, 0.01, 10**9, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="TTL"):
            nb.lease(ttl=ttl)
    with pytest.raises(ValueError, match="lock name"):
        nb.lock("a/b", ttl=5)
    with pytest.raises(TypeError, match="Lease"):
        await nb.create(ConformanceItem(id="x"), lease="not a lease")  # type: ignore[arg-type]
    async with nb.lease(ttl=5) as lease:
        pass  # revoked at the end of the block
    with pytest.raises(dfdb.LeaseLostError):
        await nb.create(ConformanceItem(id="x"), lease=lease)
    async with dfdb.connect("memory://") as other, other.lease(ttl=5) as foreign, other.lock("l", ttl=5) as lock:
        with pytest.raises(ValueError, match="another database"):
            await nb.create(ConformanceItem(id="x"), lease=foreign)
        with pytest.raises(ValueError, match="another database"):
            await nb.create(ConformanceItem(id="x"), guard=lock)
    assert await nb.get_all(ConformanceItem) == []
