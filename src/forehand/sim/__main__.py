"""`python -m forehand.sim`: run simulation campaigns and replay seeds."""

from __future__ import annotations

from forehand.sim._cli import main

raise SystemExit(main())
