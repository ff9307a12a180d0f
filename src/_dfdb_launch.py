"""The ``dfdb`` console script's entry point, outside the ``dfdb`` package on purpose.

Importing anything inside ``dfdb`` first runs ``dfdb/__init__.py``, which loads pydantic
and the whole public API (the better part of a second on a slow machine) before the
command can handle Ctrl-C. This module imports nothing, so the script reaches
:func:`main` at once, and a Ctrl-C during those imports ends the command quietly (exit
130) instead of with a traceback.
"""

from __future__ import annotations

__all__ = ["main"]


def main() -> int:
    """Run the ``dfdb`` command line; returns the exit status."""
    try:
        from dfdb.cli import main as run
    except KeyboardInterrupt:  # Ctrl-C while the command was still loading
        return 130
    return run()
