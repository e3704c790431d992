"""``python -m attrlens``: the command line."""

from .cli import main

raise SystemExit(main())
