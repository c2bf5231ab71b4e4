"""``python -m minigpt.serve serve --checkpoint PATH`` (the same as ``minigpt serve``)."""

from . import main

raise SystemExit(main())
