"""dfdb.retry's cancellation checks on asyncio and trio."""

from __future__ import annotations

import asyncio
import weakref

import anyio
import anyio.lowlevel
import pytest

from dfdb.retry import Backoff, checkpoint_if_cancelled, fail_at, now, raise_if_cancelling, run_to_completion


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_checkpoint_if_cancelled_raises_in_a_cancelled_scope(backend: str) -> None:
    async def main() -> None:
        reached = []
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await anyio.sleep(1)
            except anyio.get_cancelled_exc_class():
                pass  # swallowed, as some client libraries do
            await checkpoint_if_cancelled()
            reached.append("after the check")
        assert scope.cancelled_caught
        assert reached == []
        await checkpoint_if_cancelled()  # outside the cancelled scope: returns

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_now_is_the_clock_that_cancel_scope_deadlines_follow(backend: str) -> None:
    """``now()`` reads anyio's clock on either loop: a deadline taken from it ends a scope
    when anyio's own deadline would (the write path's deadlines are computed from it)."""

    async def main() -> None:
        before, during, after = now(), anyio.current_time(), now()
        assert before <= during <= after
        deadline = now() + 0.02
        with anyio.CancelScope(deadline=deadline) as scope:
            await anyio.sleep(1)
        assert scope.cancelled_caught and anyio.current_time() >= deadline
        assert now() >= deadline

    anyio.run(main, backend=backend)


def test_checkpoint_if_cancelled_sees_a_swallowed_asyncio_cancel() -> None:
    async def main() -> None:
        reached = []

        async def victim() -> None:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                pass  # swallowed
            await checkpoint_if_cancelled()
            reached.append("after the check")

        task = asyncio.create_task(victim())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert reached == []

    asyncio.run(main())


async def test_a_logged_retry_keeps_no_exception_alive(caplog: pytest.LogCaptureFixture) -> None:
    """A retry's log record carries the error's message, not the error: a kept record (a
    handler that stores records, as pytest's does) must not keep the traceback's frames, and
    the connections they hold, alive."""

    class Held:
        pass

    held = Held()
    ref = weakref.ref(held)

    def fail(connection: Held) -> None:
        raise ConnectionError("the server went away")

    try:
        fail(held)
    except ConnectionError as exc:
        await Backoff(initial=0.001).pause(0, "reading", exc)
    del held
    assert "reading failed (the server went away)" in caplog.text
    assert ref() is None, "the log record keeps the failed call's frames alive"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_call_run_to_completion_sees_its_deadline_and_finishes_its_shielded_steps(backend: str) -> None:
    """A driver bounds its own waits by the effective deadline and shields the steps that must
    not be cut (a transaction in a thread): the deadline given reaches it as an anyio scope."""
    seen: list[float] = []

    async def call() -> str:
        seen.append(anyio.current_effective_deadline())
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.05)  # a step that runs past the deadline to its end
        await anyio.sleep(1)  # cut at the deadline
        return "not reached"

    async def main() -> None:
        deadline = anyio.current_time() + 0.01
        with pytest.raises(TimeoutError):
            await run_to_completion(call, deadline)
        assert len(seen) == 1 and seen[0] == pytest.approx(deadline, abs=1e-3)
        assert anyio.current_time() - deadline >= 0.04  # the shielded step ended first

    anyio.run(main, backend=backend)


async def test_raise_if_cancelling_raises_the_cancellation_a_client_library_turned_into_its_error() -> None:
    """A client library that answers an anyio deadline's cancellation with an error of its
    own: what raise_if_cancelling raises carries the deadline's message, so the deadline ends
    as its TimeoutError, never as a bare CancelledError; a cancellation from outside still
    propagates."""

    async def call() -> None:
        try:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                raise ConnectionResetError("connection lost") from None  # the library's own error
        except ConnectionResetError as exc:
            raise_if_cancelling(exc)

    with pytest.raises(TimeoutError), anyio.fail_after(0.01):
        await call()
    task = asyncio.create_task(call())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_fail_at_raises_timeout_at_its_deadline_only(backend: str) -> None:
    """Past its deadline the block is cut with ``TimeoutError``; a block that ends in time
    returns its value; an enclosing scope's cancellation goes through as a cancellation."""

    async def main() -> None:
        start = anyio.current_time()
        with pytest.raises(TimeoutError):
            with fail_at(start + 0.02):
                await anyio.sleep(1)
        assert 0.015 <= anyio.current_time() - start < 0.5
        with fail_at(anyio.current_time() + 1) as scope:
            await anyio.lowlevel.checkpoint()
        assert not scope.cancelled_caught
        with anyio.CancelScope() as outer:
            with fail_at(anyio.current_time() + 1):
                outer.cancel()
                await anyio.sleep(1)
            pytest.fail("not reached: the outer scope's cancellation passes through")
        assert outer.cancelled_caught

    anyio.run(main, backend=backend)


def test_a_caller_cancelled_during_run_to_completion_gets_the_cancel_after_the_call() -> None:
    """Cancelled (natively, twice) while its call runs, the caller waits for the call's end,
    then raises ``CancelledError``; the call was not cut."""

    async def main() -> None:
        started, release, ended = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def call() -> str:
            started.set()
            await release.wait()
            ended.set()
            return "done"

        caller = asyncio.create_task(run_to_completion(call, anyio.current_time() + 5))
        await asyncio.wait_for(started.wait(), 5)
        caller.cancel()
        await asyncio.sleep(0)  # the caller takes the first cancellation
        caller.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, 5)
        assert ended.is_set()

    asyncio.run(main())
