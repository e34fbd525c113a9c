"""Only the S3 groups, many rounds, as ratios: ``python -m bench.s3_ratios [ROUNDS [GROUP]]``.

For re-measuring S3 against raw boto3 quickly (the full suite takes far
longer): each ratio is the median over rounds of persistkit's rate divided by
its reference's in the same round, with the inter-quartile range of those
per-round ratios, so a difference can be told from the noise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import sys
import tempfile

from bench.backends import s3
from bench.harness import run_group
from bench.sizes import FULL


async def main(rounds: int, only: str | None) -> None:
    sizes = dataclasses.replace(FULL, rounds=rounds)
    with tempfile.TemporaryDirectory(prefix="persistkit-bench-s3-") as workdir:
        for group in s3.groups(workdir, sizes):
            if only is not None and group.key != only:
                continue
            result = await run_group(group)
            print(f"{result.title} ({rounds} rounds)")
            for case in result.cases:
                ratios = sorted(case.ratios)
                low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
                print(
                    f"  {case.name}: {case.median:,.0f} {result.unit}/s, "
                    f"x{statistics.median(ratios):.2f} of {case.reference} "
                    f"(IQR {low:.2f}-{high:.2f})"
                )


if __name__ == "__main__":
    asyncio.run(
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 21,
            sys.argv[2] if len(sys.argv) > 2 else None,
        )
    )
