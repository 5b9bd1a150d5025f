"""Micro-benchmark of the local rate limiter: ns per check() + consume(), compiled against pure.

For each twin of ``LocalLimiter`` (ext/_limits.pyx and sluice/_native/_pure_limits.py)
and each algorithm, it times the gateway's admission step for one request on one
policy, ``if check(key, 1, now) == 0: consume(key, 1, now)``, in a Python loop:
once over one existing key again and again (the per-caller hot path), and once over
100,000 existing keys in a shuffled order (dict and cache misses; the keys are
created by a first pass and never swept or evicted, as the buckets are large enough
that every call admits).  It also times check() alone on the existing key.  The
figures are the best of five runs, in ns per step, and include the loop and the call
overhead a caller pays; the empty loop's cost is printed so it can be taken off.
Takes a few seconds; nothing else runs.

    .venv/bin/python bench/limits_micro.py [--keys 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

from sluice._native import _pure_limits

try:
    from sluice._native import _limits
except ImportError:  # not built here
    _limits = None


def admit_all(limiter: Any, keys: list[str], now: float) -> None:
    check, consume = limiter.check, limiter.consume
    for key in keys:
        if check(key, 1.0, now) == 0.0:
            consume(key, 1.0, now)


def check_all(limiter: Any, keys: list[str], now: float) -> None:
    check = limiter.check
    for key in keys:
        check(key, 1.0, now)


def empty_loop(limiter: Any, keys: list[str], now: float) -> None:
    for _key in keys:
        pass


def best_ns(step: Callable[[Any, list[str], float], None], limiter: Any, keys: list[str], repeat: int) -> float:
    best = float("inf")
    now = 1000.0
    for _ in range(repeat):
        now += 0.001  # time moves on between runs, as it does between requests
        start = time.perf_counter_ns()
        step(limiter, keys, now)
        best = min(best, (time.perf_counter_ns() - start) / len(keys))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000, help="distinct keys for the many-keys run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is printed")
    args = parser.parse_args()
    many = [f"key-{i:06d}" for i in range(args.keys)]
    random.Random(7).shuffle(many)
    one = ["caller-1"] * args.keys
    twins = [("pure", _pure_limits)] + ([("compiled", _limits)] if _limits is not None else [])
    print(f"empty loop: {best_ns(empty_loop, None, one, args.repeat):.0f} ns per step (included below)")
    for algorithm in ("token_bucket", "sliding_window"):
        for name, module in twins:
            limiter = module.LocalLimiter(algorithm, 1e12, 1.0, 1e12, max_keys=args.keys + 1)
            admit_all(limiter, many, 999.0)  # every key exists from here on
            figures = (best_ns(admit_all, limiter, one, args.repeat), best_ns(check_all, limiter, one, args.repeat),
                       best_ns(admit_all, limiter, many, args.repeat))
            print(f"{algorithm:14} {name:8} check+consume one key {figures[0]:6.0f} ns | check alone {figures[1]:6.0f}"
                  f" ns | check+consume over {args.keys} keys {figures[2]:6.0f} ns")
    if _limits is None:
        print("the compiled module is not built: only the pure twin was measured")


if __name__ == "__main__":
    main()
