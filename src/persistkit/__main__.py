"""``python -m persistkit``: the ``persistkit`` command line."""

from persistkit._cli import main

main()
