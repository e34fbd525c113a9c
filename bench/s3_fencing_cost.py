"""What fencing costs a tick commit on S3: ``python -m bench.s3_fencing_cost [COMMITS]``.

Commits with and without a lease alternate one by one on one backend (so load
on the machine hits both alike); prints each kind's median latency and the
median of the per-pair ratios, with their inter-quartile range.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

from bench.backends import real_servers
from persistkit.backends._base import fencing
from persistkit.backends._s3 import S3Backend

BUCKET = "persistkit-bench"
TICK = {f"{name}/BTCUSDT": b'{"price": 1.0}' for name in ("signal", "schedule", "risk", "partial")}


async def main(commits: int) -> None:
    server = real_servers().SeaweedS3().start()
    try:
        os.environ["AWS_ACCESS_KEY_ID"] = server.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret_key
        server.client().create_bucket(Bucket=BUCKET)
        backend = S3Backend.from_url(
            f"s3://{BUCKET}/fencing?endpoint_url={server.endpoint_url}&region=us-east-1"
        )
        lease = await backend.acquire_lease("bench", {"host": "bench"}, 3600)
        plain: list[float] = []
        fenced: list[float] = []
        for number in range(commits + 10):
            for leases, into in (((), plain), ((lease,), fenced)):
                token = fencing.set(leases)
                started = time.perf_counter()
                await backend.commit({key: b"%d" % number for key in TICK})
                elapsed = time.perf_counter() - started
                fencing.reset(token)
                if number >= 10:  # the first ones warm connections up
                    into.append(elapsed)
        await backend.aclose()
    finally:
        server.stop()
    ratios = sorted(a / b for a, b in zip(plain, fenced, strict=True))
    low, _, high = statistics.quantiles(ratios, n=4)
    print(f"commit without a lease: median {statistics.median(plain) * 1000:.1f} ms")
    print(f"commit under a lease:   median {statistics.median(fenced) * 1000:.1f} ms")
    print(
        f"speed under a lease / without, per pair: median x{statistics.median(ratios):.3f} "
        f"(IQR {low:.3f}-{high:.3f}, {commits} pairs)"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
