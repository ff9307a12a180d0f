"""Ctrl-C while ``python -m dfdb`` loads the package: exit 130, no traceback.

Python imports the ``dfdb`` package (pydantic and the whole public API, the better part
of a second on a slow machine) before it runs ``dfdb/__main__.py``, so that module's own
handling comes too late for a Ctrl-C in the meantime. The package imports this module
first: importing it calls :func:`quiet_while_loading`, which acts when Python is locating
a module to run (``sys.argv[0]`` is ``"-m"`` then), and the package calls :data:`loaded`
once its import ends, however it ends (a failed import leaves no handler behind). The
console script has the same guarantee from ``_dfdb_launch``, which imports nothing before
its handler.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["loaded", "quiet_while_loading"]


def _nothing() -> None:
    pass


def quiet_while_loading() -> Callable[[], None]:
    """While ``python -m`` locates the module it runs, make SIGINT end the process with
    status 130 and no traceback; returns what puts the usual handling back (it leaves a
    handler set by someone else meanwhile alone).

    Nothing changes outside ``python -m``, off the main thread, or when SIGINT already has
    a handler other than Python's default.
    """
    if sys.argv[:1] != ["-m"] or threading.current_thread() is not threading.main_thread():
        return _nothing
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return _nothing

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(130)

    signal.signal(signal.SIGINT, interrupted)

    def restore() -> None:
        if signal.getsignal(signal.SIGINT) is interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    return restore


loaded = quiet_while_loading()
"""Puts the usual SIGINT handling back: ``dfdb/__init__.py`` calls it once its import ends,
however it ends."""
