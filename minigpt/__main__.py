"""`python -m minigpt ...` is the same as the `minigpt` command."""

from .cli import main

raise SystemExit(main())
