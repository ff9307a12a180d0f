"""Python's cyclic garbage collector paused while a bulk load builds objects that stay.

Each full collection the collector starts walks every tracked object of the process, and a
load of N objects starts more of them as the heap grows: a Replica's sync of a million ports
on memory:// spent a quarter of its time in three of them. A load with no await (or one call
in a worker thread) runs with the collector disabled; the objects it built are collected,
as any others, once it is enabled again.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["collector_paused"]

_lock = threading.Lock()
_pauses = 0
_resume = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The collector disabled inside, enabled again when the last pause (of any thread)
    ends, also when it fails. A collector that was disabled when the first pause began (by
    the application) is left disabled."""
    global _pauses, _resume
    with _lock:
        if _pauses == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _resume:
                gc.enable()
