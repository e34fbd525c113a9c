"""``python -m persistkit``: the ``persistkit`` command line."""

from persistkit.cli import main

main()
