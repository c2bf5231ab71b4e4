"""``python -m minigpt.serve [serve] --checkpoint PATH``: the same as ``minigpt serve``, through the main
CLI, so a missing extra or a bad option is one line there too."""

import sys

from minigpt.cli import main

argv = sys.argv[1:]
raise SystemExit(main(argv if argv[:1] == ["serve"] else ["serve", *argv]))
