"""``python -m persistkit._cli``: the same as the ``persistkit`` console script."""

from persistkit._cli import main

main()
