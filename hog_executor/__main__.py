"""``python -m hog_executor``: the ``hog`` command."""

from .cli import main

raise SystemExit(main())
