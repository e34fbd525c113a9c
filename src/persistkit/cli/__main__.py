"""``python -m persistkit.cli``: the same as the ``persistkit`` console script."""

from persistkit.cli import main

main()
