"""`python -m forehand.demo`: see `forehand.demo`."""

from __future__ import annotations

import sys

from forehand.demo import main

if __name__ == "__main__":
    sys.exit(main())
