"""The conformance suite on the built-in drivers (URLs from the ini or --dfdb-url)."""

import anyio
import pytest

import dfdb
from dfdb.testing.suite import *  # noqa: F403


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "etcd://127.0.0.1:1", "zk://127.0.0.1:1/p"])
def test_asyncio_only_driver_refuses_trio_in_one_line(url: str) -> None:
    """A driver whose client library is asyncio-only says so when opened under trio,
    before it tries to connect (nothing listens on port 1)."""

    async def main() -> None:
        with pytest.raises(dfdb.UnsupportedEventLoopError) as refused:
            async with dfdb.connect(url, timeout=5):
                pass
        message = str(refused.value)
        assert "\n" not in message
        assert "needs asyncio" in message and "trio" in message, message

    anyio.run(main, backend="trio")
