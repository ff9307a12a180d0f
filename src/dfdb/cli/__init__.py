"""The ``dfdb`` command: demo, admin commands, dump and restore, copy between backends,
benchmarks, local servers.

Every handled error prints one line; usage mistakes exit 2, other failures exit 1.

Modules: ``options`` (the grammar), ``app`` (running a command, errors), ``objects``
(``ls``/``get``/``put``/``rm``/``watch``), ``transfer`` (``tables``/``copy``/``dump``/
``restore``), ``output`` (tables, progress).
"""

from __future__ import annotations

from dfdb.cli.app import main
from dfdb.cli.options import DEFAULT_URL, DEMO_URL

__all__ = ["DEFAULT_URL", "DEMO_URL", "main"]
