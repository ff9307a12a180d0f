"""Bytes this process holds on its heap, read without slowing the work measured.

``tracemalloc`` traces every allocation: a FULL Replica of a million ports syncs several
times slower under it, and the traces take gigabytes of their own. Where CPython's own
allocator (pymalloc) and glibc's ``malloc`` serve the process, as on Linux by default,
:func:`allocated_bytes` reads their counters instead, in milliseconds and with no cost
to the work in between: the bytes in pymalloc's allocated blocks (objects up to 512
bytes, as ``sys._debugmallocstats`` reports them) plus the bytes ``malloc`` has handed
out and not taken back (``mallinfo2``: its heap and its mmapped chunks; larger objects,
dict and list tables, C libraries). The figure counts each block at its allocated size
(pymalloc rounds to 16 bytes, ``malloc`` adds its chunk header), so it reads above
``tracemalloc``, which counts the sizes asked for: at 100,000 LogicalPorts, by 2 per cent
for a dict of models and 8 to 10 for a Replica (smaller blocks, more rounding). Elsewhere (another
allocator, ``PYTHONMALLOC`` set, ``tracemalloc`` already tracing, no glibc) the counters
are not there and :class:`Heap` falls back to ``tracemalloc``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import re
import sys
import tempfile
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ALLOCATOR", "TRACEMALLOC", "Heap", "allocated_bytes"]

ALLOCATOR = "allocator counters"
"""The method of :func:`allocated_bytes` (pymalloc's and glibc malloc's own counters)."""
TRACEMALLOC = "tracemalloc"
"""The fallback method: ``tracemalloc`` traces the measured block."""

_ALLOCATED = re.compile(rb"# bytes in allocated blocks\s*=\s*([\d,]+)")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _mallinfo2() -> _MallInfo2 | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        call = ctypes.CDLL(name).mallinfo2  # glibc 2.33 and later
    except (OSError, AttributeError):
        return None
    call.restype = _MallInfo2
    info: _MallInfo2 = call()
    return info


def _pymalloc_bytes() -> int | None:
    """The bytes in pymalloc's allocated blocks, or ``None`` when pymalloc does not serve
    (or ``tracemalloc`` wraps it: then it reports nothing)."""
    if tracemalloc.is_tracing():
        return None
    show = getattr(sys, "_debugmallocstats", None)
    if show is None:
        return None
    with tempfile.TemporaryFile() as out:
        with contextlib.suppress(AttributeError, ValueError):
            sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)  # it writes to the C stderr
            show()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        found = _ALLOCATED.search(out.read())
    return None if found is None else int(found.group(1).replace(b",", b""))


def allocated_bytes() -> int | None:
    """The bytes the process's allocators have handed out and not taken back, after a
    full garbage collection; ``None`` where the counters cannot be read."""
    gc.collect()
    small = _pymalloc_bytes()
    if small is None:
        return None
    info = _mallinfo2()
    if info is None:
        return None
    return small + int(info.uordblks) + int(info.hblkhd)


@dataclass
class Heap:
    """What a block leaves allocated, by :func:`allocated_bytes` where it can be read,
    else by ``tracemalloc`` (started for the block only)."""

    method: str = ""
    """:data:`ALLOCATOR` or :data:`TRACEMALLOC`; chosen on creation."""

    def __post_init__(self) -> None:
        if not self.method:
            self.method = ALLOCATOR if allocated_bytes() is not None else TRACEMALLOC

    @property
    def slows(self) -> bool:
        """Whether measuring slows the block (``tracemalloc``): then it is not also timed."""
        return self.method == TRACEMALLOC

    def start(self) -> int:
        """Begin a measure; returns what :meth:`stop` takes."""
        if self.method == ALLOCATOR:
            before = allocated_bytes()
            if before is None:
                raise RuntimeError("the allocator counters could not be read")
            return before
        gc.collect()
        tracemalloc.start()
        return tracemalloc.get_traced_memory()[0]

    def stop(self, start: int) -> int:
        """End the measure begun by :meth:`start`; returns the bytes left allocated since."""
        if self.method == ALLOCATOR:
            after = allocated_bytes()
            if after is None:
                raise RuntimeError("the allocator counters could not be read")
            return after - start
        try:
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - start
        finally:
            tracemalloc.stop()

    def abandon(self) -> None:
        """End a measure without a figure (the block failed)."""
        if self.method == TRACEMALLOC:
            tracemalloc.stop()

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[int]]:
        """Yields a list that holds, after the block, the bytes it left allocated."""
        got: list[int] = []
        start = self.start()
        try:
            yield got
        except BaseException:
            self.abandon()
            raise
        got.append(self.stop(start))
