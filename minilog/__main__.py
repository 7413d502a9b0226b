"""``python -m minilog``: the same command line as the ``minilog`` script."""

from __future__ import annotations

import sys

from minilog.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
