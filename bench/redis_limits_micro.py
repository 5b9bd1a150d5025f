"""Micro-benchmark of the distributed rate-limit check: µs per RedisLimiter.acquire on a real redis-server.

Starts its own redis-server on a free port (CPU 1), then times sequential acquires (one
policy, and three policies in one call) from one asyncio client on CPU 0: the round trip
a request pays on the distributed path, against the local check of bench/limits_micro.py.

    .venv/bin/python bench/redis_limits_micro.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import uvloop

from _harness import Processes, log, run_main, start_redis
from sluice.state.redis import connect
from sluice.state.redis_limits import Check, RedisLimiter


async def measure(url: str, calls: int) -> dict[str, float]:
    limiter = RedisLimiter(connect(url, timeout_s=1.0, name="ratelimit"), timeout_s=1.0)
    one = [Check("p1", "key:a", "token_bucket", 1e9, 60, 1e9, 1)]
    three = [*one, Check("p2", "ip:1.2.3.4", "sliding_window", 1e9, 60, 1e9, 1),
             Check("p3", "global", "token_bucket", 1e9, 60, 1e9, 1)]
    results = {}
    for label, checks in (("1 policy", one), ("3 policies", three)):
        for _ in range(500):  # warm: script loaded, connection open
            await limiter.acquire(checks)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(calls):
                await limiter.acquire(checks)
            best = min(best, (time.perf_counter() - started) / calls)
        results[label] = best * 1e6
    await limiter.aclose()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-redis-bench-"))
    with Processes(tmp) as procs:
        results = uvloop.run(measure(start_redis(procs, tmp), args.calls))
    for label, micros in results.items():
        log(f"acquire, {label}: {micros:.1f} us per call (sequential, one client)")
        print(f"| {label} | {micros:.1f} |")
    return 0


if __name__ == "__main__":
    run_main(main)
