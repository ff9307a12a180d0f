"""``python -m dfdb``: the same as the ``dfdb`` command."""

try:
    from dfdb.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command was still loading: no traceback
    raise SystemExit(130) from None

raise SystemExit(main())
