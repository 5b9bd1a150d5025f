"""How far the hybrid rate-limit mode overshoots: N instances hammering one policy through a real redis-server.

N ``RateLimits`` (one per simulated instance, each with its own sync task) share one event loop
and one redis-server (CPU 1); they take turns admitting as fast as they can for ``--duration``
seconds against a token bucket of ``--rate``/s and ``--burst``.  Reported per (N, sync
interval): admitted against the exact allowance (burst + rate x elapsed), and the stated bound
(exact + (N - 1) x (burst + rate x sync interval)).

    .venv/bin/python bench/hybrid_accuracy.py [--rate 1000] [--burst 100] [--duration 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import msgspec
import uvloop

from _harness import Processes, log, run_main, start_redis
from sluice.config import RateLimitConfig
from sluice.errors import RateLimited
from sluice.pipeline.ratelimit import RateLimits
from sluice.state.redis import connect
from sluice.state.redis_limits import RedisLimiter


class Caller:
    client = "127.0.0.1:5000"

    def header(self, name: str) -> str | None:
        return None


def instance(url: str, prefix: str, algorithm: str, rate: float, burst: float, sync_s: float) -> RateLimits:
    config = msgspec.convert({
        "redis": url, "redis_timeout_s": 0.5, "sync_interval_s": sync_s,
        "policies": [{"name": "hybrid", "scope": "global", "rate": rate, "period_s": 1, "burst": burst,
                      "algorithm": algorithm, "mode": "hybrid"}]}, RateLimitConfig)
    return RateLimits(config, RedisLimiter(connect(url, timeout_s=0.5, name="ratelimit"), prefix=prefix, timeout_s=0.5))


async def overload(url: str, algorithm: str, count: int, sync_s: float, rate: float, burst: float,
                   duration: float) -> tuple[int, float]:
    prefix = f"bench:{time.monotonic_ns()}"  # shared by the instances of one run, fresh for each run
    instances = [instance(url, prefix, algorithm, rate, burst, sync_s) for _ in range(count)]
    caller = Caller()
    admitted = 0
    started = time.monotonic()
    while time.monotonic() - started < duration:
        for limits in instances:
            for _ in range(10):
                try:
                    limits.admit_local(caller, "/v1/chat/completions", "m", 0, None)  # type: ignore[arg-type]
                    admitted += 1
                except RateLimited:
                    pass
        await asyncio.sleep(0)  # the sync tasks run between rounds, as between requests in a server
    elapsed = time.monotonic() - started
    for limits in instances:
        await limits.aclose()
    return admitted, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--burst", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--algorithm", default="token_bucket", choices=("token_bucket", "sliding_window"))
    parser.add_argument("--syncs", default="0.01,0.05,0.1", help="sync intervals (s), comma-separated")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-hybrid-bench-"))
    rows = []
    with Processes(tmp) as procs:
        url = start_redis(procs, tmp)
        for count in (2, 4, 8):
            for sync_s in [float(s) for s in args.syncs.split(",")]:
                admitted, elapsed = uvloop.run(overload(url, args.algorithm, count, sync_s, args.rate, args.burst,
                                                        args.duration))
                # A window admits its limit (rate per 1 s) per window; a bucket its burst plus the refill.
                start = args.rate if args.algorithm == "sliding_window" else args.burst
                exact = start + args.rate * elapsed
                bound = exact + (count - 1) * (args.burst + args.rate * sync_s)
                rows.append((count, sync_s, admitted, exact, bound))
                log(f"N={count} sync={sync_s}s: admitted {admitted}, exact {exact:.0f}, bound {bound:.0f}")
    print(f"| instances | sync interval | admitted / exact | stated bound / exact |  ({args.algorithm}, "
          f"rate {args.rate:g}/s, burst {args.burst:g}, {args.duration:g} s)")
    print("|---:|---:|---:|---:|")
    for count, sync_s, admitted, exact, bound in rows:
        print(f"| {count} | {sync_s * 1000:g} ms | {admitted / exact:.3f} | {bound / exact:.3f} |")
    return 0


if __name__ == "__main__":
    run_main(main)
