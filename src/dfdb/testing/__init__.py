"""Testing support: the conformance suite, a fault-injecting driver, leak checks.

A third-party driver runs the same behaviour tests as the built-in ones::

    # conftest.py
    pytest_plugins = ["dfdb.testing.plugin"]

    # test_conformance.py
    from dfdb.testing.suite import *  # noqa: F403

    # pytest.ini / pyproject: dfdb_urls = mydb://127.0.0.1:1234/{name}

``{name}`` in a URL is replaced by a fresh name for every test, so that each test
starts from an empty namespace. ``--dfdb-url URL`` (repeatable) overrides the ini.
``{redis}``, ``{etcd}`` and ``{zookeeper}`` in a URL start a local server for the
session with :mod:`dfdb.servers` (the code behind ``dfdb server run``).
"""

from __future__ import annotations

from dfdb.testing.faults import FAULTS, FaultyDriver
from dfdb.testing.leaks import ResourceSnapshot

__all__ = ["FAULTS", "FaultyDriver", "ResourceSnapshot"]
