"""``python -m dfdb``: the same as the ``dfdb`` command."""

from dfdb.cli import main

raise SystemExit(main())
