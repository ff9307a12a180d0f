"""Fixtures shared by the test files (the rest come from the ``dfdb.testing`` plugin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest

import dfdb

pytest_plugins = ["dfdb.testing.plugin"]


@pytest.fixture
async def faulty_nb(dfdb_leak_check: None, dfdb_fresh_url: str) -> AsyncIterator[dfdb.NbApi]:
    """The URL under test behind the fault-injecting wrapper, which can drop events silently
    and cut streams (``FaultyDriver.drop_next``, ``FaultyDriver.cut``)."""
    scheme, rest = dfdb_fresh_url.split("://", 1)
    async with dfdb.connect(f"faulty://{rest}{'&' if '?' in rest else '?'}inner={quote(scheme, safe='')}") as nb:
        if not nb.exact:
            pytest.skip("snapshot polling promises convergence, not every change")
        yield nb
