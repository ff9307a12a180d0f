"""What the conformance suite's tests share: its two models and waiting helpers."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

import dfdb
import dfdb.drivers
from dfdb import ChangeEvent, ChangeStream, NbApi, NbModel, Ref
from dfdb.testing.leaks import ResourceSnapshot

__all__ = [
    "WAIT",
    "ConformanceItem",
    "ConformanceLink",
    "conformance_test",
    "events_until",
    "next_event",
    "raw_put",
]

WAIT = 10.0

_OPENED = ("nb", "exact_nb")


def conformance_test(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Make the async ``test`` a conformance test: a plain function that runs it in an
    event loop of its own, on the anyio backend under test (``dfdb_backend``).

    ``nb`` (or ``exact_nb``: skipped when the URL's streams only converge) is an open
    :class:`~dfdb.NbApi` on a fresh namespace of the URL under test; any other parameter
    is a pytest fixture. Tasks, threads or file descriptors left behind fail the test.
    To pytest the test is synchronous, so the plugin that runs a project's other async
    tests (pytest-asyncio in any mode) leaves it alone.
    """
    signature = inspect.signature(test)
    opened = next((name for name in _OPENED if name in signature.parameters), None)
    kept = [p for p in signature.parameters.values() if p.name not in (*_OPENED, "dfdb_leak_check")]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY)
        for name in ("dfdb_backend", "dfdb_fresh_url")
        if name not in signature.parameters
    ]

    def run(**fixtures: Any) -> None:
        backend = fixtures["dfdb_backend"]
        url = fixtures["dfdb_fresh_url"]
        args = {name: value for name, value in fixtures.items() if name in signature.parameters}
        not_exact: list[bool] = []

        async def main() -> list[str]:
            baseline = ResourceSnapshot.take()
            if opened is None:
                await test(**args)
            else:
                async with dfdb.connect(url) as api:
                    if opened == "exact_nb" and not api.exact:
                        not_exact.append(True)
                    else:
                        await test(**{opened: api}, **args)
            return await ResourceSnapshot.wait_clean(baseline)

        leaks = anyio.run(main, backend=backend)
        if not_exact:
            pytest.skip("snapshot polling promises convergence, not every change")
        if leaks:
            pytest.fail("resources left behind: " + "; ".join(leaks))

    run.__name__ = test.__name__
    run.__qualname__ = test.__qualname__
    run.__module__ = test.__module__
    run.__doc__ = test.__doc__
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept] + added,
        return_annotation=None,
    )
    return run


class ConformanceItem(NbModel, table="dfdb_conformance_item"):
    """The suite's main model."""

    n: int = 0
    label: str = ""


class ConformanceLink(NbModel, table="dfdb_conformance_link"):
    """A second table, referencing the first."""

    item: Ref[ConformanceItem] | None = None


async def next_event(stream: ChangeStream, within: float = WAIT) -> ChangeEvent:
    """The stream's next event, failing the test after ``within`` seconds."""
    try:
        with anyio.fail_after(within):
            return await anext(stream)
    except TimeoutError:
        pytest.fail(f"no change event within {within}s")


async def events_until(
    stream: ChangeStream, done: Callable[[], bool], within: float = WAIT
) -> AsyncIterator[ChangeEvent]:
    """Yield events until ``done()`` is true after one; fail after ``within`` seconds."""
    try:
        with anyio.fail_after(within):
            while not done():
                yield await anext(stream)
    except TimeoutError:
        pytest.fail(f"the stream did not reach the expected state within {within}s")


async def raw_put(nb: NbApi, table: str, id: str, topic: str | None, value: bytes) -> None:
    """Write raw bytes straight through the driver (a lost reply is checked, not trusted)."""
    try:
        await nb.driver.put(table, id, topic, value, dfdb.drivers.ANY)
    except dfdb.BackendUnavailableError:
        entry = await nb.driver.get(table, id)
        assert entry is not None and entry.value == value
