"""Micro-benchmark of the routing decision: µs per request for choose() + begin() + succeeded().

What the request path pays per attempt to pick a deployment and record its outcome, in a Python loop,
for each balancing strategy: one deployment (the default strategy, breakers off: the common case, to be
compared with the empty loop), then four deployments per strategy, with
breakers off and on.  The clock is read once per request (as the caller does), affinities for sticky
come from a pool of 1,000 callers, regions for geo alternate between two.  Best of ``--repeat`` runs,
variants interleaved so that a drifting machine spreads over all; the empty loop's cost is printed so it
can be taken off.  Takes a few seconds; nothing else runs.

    .venv/bin/python bench/routing_micro.py [--requests 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from sluice.config import parse_config
from sluice.routing import ModelRoute, Router

NOTHING: frozenset[str] = frozenset()
STRATEGIES = ("weighted", "least_inflight", "latency", "health", "sticky", "geo")


def route(strategy: str, deployments: int, breaker: bool) -> ModelRoute:
    providers = "\n".join(f"  p{i}: {{kind: openai, base_url: 'http://10.0.0.{i + 1}'}}" for i in range(deployments))
    regions = ("eu", "us")
    targets = ", ".join(f"{{provider: p{i}, model: m{i}, weight: {i % 2 + 1}, region: {regions[i % 2]}}}"
                        for i in range(deployments))
    config = parse_config(f"""
providers:
{providers}
models:
  chat: {{strategy: {strategy}, targets: [{targets}]}}
resilience: {{breaker: {{enabled: {str(breaker).lower()}, consecutive_failures: 5}}}}
""", {})
    found = Router(config, seed=1).get("chat")
    assert found is not None
    return found


def request_loop(r: ModelRoute, n: int) -> float:
    affinities = [f"caller-{i}" for i in range(1000)]
    regions = ("eu", "us")
    choose = r.choose
    clock = time.monotonic
    start = time.perf_counter()
    for i in range(n):
        now = clock()
        d = choose(NOTHING, affinity=affinities[i % 1000], region=regions[i & 1], now=now)
        assert d is not None
        d.begin(now)
        d.succeeded(now, 0.05, 0.01)
    return time.perf_counter() - start


def empty_loop(r: ModelRoute, n: int) -> float:
    affinities = [f"caller-{i}" for i in range(1000)]
    clock = time.monotonic
    start = time.perf_counter()
    for i in range(n):
        clock()
        affinities[i % 1000]  # what the request loop pays besides routing
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is printed")
    args = parser.parse_args()
    cases: list[tuple[str, Callable[[ModelRoute, int], float], ModelRoute]] = [
        ("empty loop (clock read + affinity lookup)", empty_loop, route("weighted", 1, False)),
        ("1 deployment, weighted, breakers off", request_loop, route("weighted", 1, False)),
        ("1 deployment, weighted, breakers on", request_loop, route("weighted", 1, True)),
    ]
    for breaker in (False, True):
        for strategy in STRATEGIES:
            cases.append((f"4 deployments, {strategy}, breakers {'on' if breaker else 'off'}", request_loop,
                          route(strategy, 4, breaker)))
    best = [float("inf")] * len(cases)
    for _ in range(args.repeat):
        for i, (_, loop, r) in enumerate(cases):
            best[i] = min(best[i], loop(r, args.requests))
    print(f"routing: choose + begin + succeeded per request, best of {args.repeat} x {args.requests} requests")
    for (name, _, _), seconds in zip(cases, best, strict=True):
        print(f"  {name:48} {seconds / args.requests * 1e6:7.3f} µs")


if __name__ == "__main__":
    main()
