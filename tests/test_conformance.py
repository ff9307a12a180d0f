"""The conformance suite on the built-in drivers (URLs from the ini or --dfdb-url)."""

from dfdb.testing.suite import *  # noqa: F403
