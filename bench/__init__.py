"""persistkit's benchmark suite: ``bash scripts/bench.sh`` (or ``python -m bench``).

Not part of the test run. Every figure is a ratio to a reference measured in the
same run, in interleaved rounds; see ``docs/performance.md`` for the last run.
"""
