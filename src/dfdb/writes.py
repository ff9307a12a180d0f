"""The write path of the NbApi: one ``put`` with retries that recognises its own success."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from dfdb.codec import still_expected, write_id
from dfdb.drivers.base import Expect, Guard
from dfdb.errors import (
    AlreadyExistsError,
    ConflictError,
    DfdbError,
    LockedError,
    OutcomeUnknownError,
)
from dfdb.retry import run_to_completion

if TYPE_CHECKING:
    from dfdb.nb import NbApi

__all__ = ["write"]


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
            return await run_to_completion(put)
        except LockedError:
            sent = retried  # this attempt wrote nothing
            raise
        except (ConflictError, AlreadyExistsError):
            if not retried:
                raise
            # the earlier attempt may have landed after the check above
            current = await driver.get(table, id)
            if current is None or write_id(current.value) != wid:
                raise
            return current.revision

    with nb._counters.writing(table):
        return await nb._retry(attempt, f"write of {table}/{id}", table, give_up)
