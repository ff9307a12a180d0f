"""The write path of the NbApi: one ``put`` with retries that recognises its own success."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import anyio

from dfdb.codec import check_topic, origin_of, still_expected, write_id
from dfdb.drivers.base import ABSENT, Expect, Guard, PutRequest
from dfdb.errors import (
    AlreadyExistsError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConflictError,
    DfdbError,
    LockedError,
    OutcomeUnknownError,
)
from dfdb.nbmodel import NbModel
from dfdb.retry import checkpoint_if_cancelled, fail_at, now, run_to_completion

if TYPE_CHECKING:
    from dfdb.nb import NbApi

__all__ = ["Batch", "create_chunk", "in_waves", "put_chunk", "update_chunk", "write"]

M = TypeVar("M", bound="NbModel")


async def write(
    nb: NbApi,
    table: str,
    id: str,
    topic: str | None,
    value: bytes,
    wid: bytes,
    expect: Expect,
    *,
    sent: bool = False,
    lease: str | None = None,
    guard: Guard | None = None,
) -> int:
    """``driver.put`` (``put_bound`` with a ``lease`` or ``guard``) through ``nb``, with
    retries; recognises its own earlier success by the write id.

    ``sent``: an earlier attempt may have reached the server (its reply was lost).
    """
    driver = nb.driver
    bound = lease is not None or guard is not None
    deadline = now() + nb.timeout  # every attempt's bound (the retries' own deadline)

    def put() -> Awaitable[int]:
        if bound:
            return driver.put_bound(table, id, topic, value, expect, lease, guard)
        return driver.put(table, id, topic, value, expect)

    def give_up(exc: BaseException) -> DfdbError:
        if not sent:  # no attempt can have landed
            return LockedError(f"write of {table}/{id} was not applied: {nb._reason(exc)}")
        return OutcomeUnknownError(
            f"{nb.url}: write of {table}/{id} failed and its outcome is unknown: {nb._reason(exc)}"
        )

    async def attempt() -> int:
        nonlocal sent
        if sent:
            with fail_at(max(deadline, now() + 0.001)):
                current = await driver.get(table, id)
            if current is not None and write_id(current.value) == wid:
                return current.revision
            if not still_expected(current, expect):
                raise OutcomeUnknownError(
                    f"{nb.url}: the reply to a write of {table}/{id} was lost and the object "
                    "has changed since; the write may or may not have taken effect"
                )
        retried, sent = sent, True
        try:
            # sent: let it finish, so it never lands after a cancelled caller returned
            return await run_to_completion(put, max(deadline, now() + 0.001))
        except LockedError:
            sent = retried  # this attempt wrote nothing
            raise
        except (ConflictError, AlreadyExistsError):
            if not retried:
                raise
            # the earlier attempt may have landed after the check above
            with fail_at(max(deadline, now() + 0.001)):
                current = await driver.get(table, id)
            if current is None or write_id(current.value) != wid:
                raise
            return current.revision

    with nb._counters.writing(table):
        return await nb._retry(attempt, f"write of {table}/{id}", table, give_up, bounded=True, deadline=deadline)


class Batch:
    """What the chunks of one ``create_many``/``update_many`` call share: once the server
    left a chunk unanswered for a whole deadline, the later writes are not sent (each would
    wait as long), and each gets a :class:`BackendUnavailableError` saying so."""

    def __init__(self) -> None:
        self.unanswered: str | None = None
        """Why the later writes are not sent (``None``: they are)."""

    def stop(self, nb: NbApi) -> None:
        """Send nothing more: the server left a write of the batch unanswered for a deadline."""
        self.unanswered = f"the server did not answer an earlier write of the batch within {nb.timeout:g}s"

    def not_sent(self, nb: NbApi, obj: object) -> BackendUnavailableError:
        table, id = getattr(type(obj), "__table__", "?"), getattr(obj, "id", "?")
        return BackendUnavailableError(f"{nb.url}: write of {table}/{id} was not sent: {self.unanswered}")


async def put_chunk(
    nb: NbApi, prepared: Sequence[tuple[M, bytes, bytes, Expect] | Exception], batch: Batch
) -> list[M | Exception]:
    """One batch of prepared writes (stored object, value, write id, expectation; or the
    error that refused it) through ``driver.put_many``: each outcome in its place, the
    object returned with its origin.

    A batch whose reply was lost (unavailable, timed out) is finished write by write,
    idempotently, as :func:`write` does after a lost reply, all within one more deadline:
    those still unresolved then are :class:`OutcomeUnknownError`, and ``batch`` sends nothing
    more. One that found the database locked until its deadline wrote nothing (each write a
    :class:`LockedError`). Cancelled, the batch already sent runs to its end first.
    """
    if batch.unanswered is not None:
        return [p if isinstance(p, Exception) else batch.not_sent(nb, p[0]) for p in prepared]
    requests = [
        PutRequest(type(p[0]).__table__, p[0].id, p[0].topic, p[1], p[3])
        for p in prepared
        if not isinstance(p, Exception)
    ]
    try:
        with anyio.fail_after(nb.timeout):
            # sent: let the batch finish, so none of it lands after a cancelled caller returned
            outcomes: list[int | Exception] = await run_to_completion(lambda: nb.driver.put_many(requests))
        await checkpoint_if_cancelled()
    except (BackendUnavailableError, BackendTimeoutError, TimeoutError) as exc:
        await checkpoint_if_cancelled()
        outcomes = [exc] * len(requests)
    results: list[M | Exception | None] = []
    lost: list[tuple[int, tuple[M, bytes, bytes, Expect]]] = []
    pending = iter(outcomes)
    for p in prepared:
        if isinstance(p, Exception):
            results.append(p)
            continue
        table = type(p[0]).__table__
        outcome = next(pending)
        if isinstance(outcome, LockedError):  # the batch wrote nothing: no reply was lost
            outcome = LockedError(f"write of {table}/{p[0].id} was not applied: {nb._reason(outcome)}")
        elif isinstance(outcome, BackendUnavailableError | BackendTimeoutError | TimeoutError):
            lost.append((len(results), p))  # finished below (counted there)
            results.append(None)
            continue
        nb._counters.outcome(table, outcome)
        results.append(_stored(p[0], outcome))
    if lost:
        await _finish_lost(nb, lost, results, batch)
    return [r for r in results if r is not None]


_RESOLVING = 16
"""Writes of a batch whose reply was lost that are finished at once."""


async def _finish_lost(
    nb: NbApi,
    lost: list[tuple[int, tuple[M, bytes, bytes, Expect]]],
    results: list[M | Exception | None],
    batch: Batch,
) -> None:
    """Finish the writes of a batch whose reply was lost (``results[index]`` for each), all
    within one deadline; those it leaves unresolved are :class:`OutcomeUnknownError`."""
    limiter = anyio.CapacityLimiter(_RESOLVING)

    async def finish(index: int, new: M, value: bytes, wid: bytes, expect: Expect) -> None:
        async with limiter:
            try:
                outcome: int | Exception = await write(
                    nb, type(new).__table__, new.id, new.topic, value, wid, expect, sent=True
                )
            except DfdbError as exc:
                outcome = exc
        results[index] = _stored(new, outcome)

    with anyio.move_on_after(nb.timeout):
        async with anyio.create_task_group() as tg:
            for index, (new, value, wid, expect) in lost:
                tg.start_soon(finish, index, new, value, wid, expect)
    for index, (new, _, _, _) in lost:
        if results[index] is None:
            table = type(new).__table__
            error = OutcomeUnknownError(
                f"{nb.url}: the reply to a batch write of {table}/{new.id} was lost and the server did not "
                f"answer again within {nb.timeout:g}s; the write may or may not have taken effect"
            )
            nb._counters.outcome(table, error)
            results[index] = error
            batch.stop(nb)


def _stored(new: M, outcome: int | Exception) -> M | Exception:
    """The object as stored at revision ``outcome`` (with its origin), or the error."""
    if isinstance(outcome, Exception):
        return outcome
    object.__setattr__(new, "__pydantic_private__", {"_dfdb_origin": (outcome, new.topic)})
    return new


async def in_waves(chunk: list[M], run: Callable[[list[M]], Awaitable[list[M | Exception]]]) -> list[M | Exception]:
    """``run(objects)`` of ``chunk`` in waves, one after the other: the n-th object of a
    (table, id) goes in the n-th wave; each outcome in its object's place.

    A driver may run a batch's writes at once, so that writes of one object would land in
    any order; in waves they apply in the batch's order, as separate calls would (the first
    one wins, the later ones are refused after it). A chunk naming each object once is one
    wave.
    """
    waves: list[list[int]] = []
    seen: dict[object, int] = {}
    for i, obj in enumerate(chunk):
        table, id = getattr(type(obj), "__table__", None), getattr(obj, "id", None)
        key = (table, id) if isinstance(table, str) and isinstance(id, str) else object()  # invalid: alone
        n = seen[key] = seen.get(key, -1) + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(i)
    if len(waves) <= 1:
        return await run(chunk)
    results: list[M | Exception] = list(chunk)
    for wave in waves:
        for i, outcome in zip(wave, await run([chunk[i] for i in wave]), strict=True):
            results[i] = outcome
    return results


async def create_chunk(nb: NbApi, chunk: list[M], batch: Batch) -> list[M | Exception]:
    """:meth:`NbApi.create_many`'s objects of one chunk as one driver batch."""
    prepared: list[tuple[M, bytes, bytes, Expect] | Exception] = []
    for obj in chunk:
        try:
            prepared.append((*nb._prepare(obj, 1), ABSENT))
        except (TypeError, ValueError) as exc:
            prepared.append(exc)
    return await put_chunk(nb, prepared, batch)


async def update_chunk(nb: NbApi, chunk: list[M], batch: Batch) -> list[M | Exception]:
    """:meth:`NbApi.update_many`'s objects of one chunk: those read through an NbApi in one
    driver batch (compare-and-swap against the revision they were read at); the others one
    by one, as :meth:`NbApi.update` does."""
    prepared: list[tuple[M, bytes, bytes, Expect] | Exception | None] = []
    for obj in chunk:
        try:
            origin = origin_of(obj) if isinstance(obj, NbModel) else None
            if origin is None or type(obj.version) is not int:
                prepared.append(None)  # update() reads it first, or refuses it
                continue
            new, value, wid = nb._prepare(obj, obj.version + 1)
            check_topic(type(new).__table__, new.id, origin[1], new.topic)
            prepared.append((new, value, wid, origin[0]))
        except (TypeError, ValueError) as exc:
            prepared.append(exc)
    batched = iter(await put_chunk(nb, [p for p in prepared if p is not None], batch))
    alone = [obj for obj, p in zip(chunk, prepared, strict=True) if p is None]
    if batch.unanswered is not None:
        single: list[M | Exception] = [batch.not_sent(nb, obj) for obj in alone]
    else:
        single = await nb._many(nb.update, alone) if alone else []
        if any(isinstance(r, BackendUnavailableError) for r in single):  # each waited its whole deadline
            batch.stop(nb)
    singles = iter(single)
    return [next(singles) if p is None else next(batched) for p in prepared]
