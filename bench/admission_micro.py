"""Micro-benchmark of a request's whole admission by the rate limits and quotas: µs per request.

For each config, times what the gateway calls per request (``admit_local`` when every policy is
local, else the awaited ``admit``) followed by ``settle``, on one caller, in a loop inside a running
uvloop event loop: subjects, every policy's check and take, the x-ratelimit-* and quota headers.
Hybrid policies sync with a real redis-server (started here, CPU 1) in the background as they would
in a server; the quota's counter is loaded once from a SQLite file, then served from memory.  Best
of ``--repeat`` runs, variants interleaved so a drifting machine spreads over all.

    .venv/bin/python bench/admission_micro.py [--requests 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from _harness import Processes, log, run_main, start_redis
from sluice.config import RateLimitConfig
from sluice.context import RequestContext
from sluice.pipeline.admission import AdmissionStage  # what the gateway runs per request
from sluice.pipeline.quotas import Quotas
from sluice.pipeline.ratelimit import RateLimits
from sluice.state.quota_store import SqliteQuotaStore
from sluice.state.redis import connect
from sluice.state.redis_limits import RedisLimiter

POLICIES = [{"name": "g", "scope": "global", "rate": 1e9, "period_s": 60, "burst": 1e9},
            {"name": "m", "scope": "model", "rate": 1e9, "period_s": 60, "burst": 1e9}]


class Caller:
    client = "127.0.0.1:5000"

    def header(self, name: str) -> str | None:
        return "Bearer sk-bench-0123456789abcdef" if name == "authorization" else None


def variants(redis: str, tmp: Path) -> dict[str, RateLimits]:
    def build(policies: list[dict[str, Any]], quotas: list[dict[str, Any]] | None = None,
              mode: str = "local") -> RateLimits:
        raw: dict[str, Any] = {"policies": [{**p, "mode": mode} for p in policies], "quota_store": str(tmp / "q.db")}
        if mode != "local":
            raw.update(redis=redis, sync_interval_s=0.05)
        if quotas:
            raw["quotas"] = quotas
        config = msgspec.convert(raw, RateLimitConfig)
        limiter = RedisLimiter(connect(redis, timeout_s=0.5, name="ratelimit"),
                               prefix=f"bench:{mode}", timeout_s=0.5) if mode != "local" else None
        quota = Quotas(config, SqliteQuotaStore(str(tmp / "q.db"))) if quotas else None
        return RateLimits(config, limiter, quota)

    key_policy = [{"name": "k", "scope": "key", "rate": 1e9, "period_s": 60, "burst": 1e9}]
    return {
        "2 local policies (global, model)": build(POLICIES),
        "1 local policy on the key": build(key_policy),
        "2 hybrid policies": build(POLICIES, mode="hybrid"),
        "2 local policies + 1 daily quota": build(POLICIES, [{"name": "q", "scope": "key", "limit": 1e15}]),
    }


async def once(limits: RateLimits, caller: Caller, requests: int) -> float:
    stage = AdmissionStage(limits)
    started = time.perf_counter()
    for _ in range(requests):
        ctx = RequestContext("r", 0.0, "/v1/chat/completions")
        ctx.model, ctx.body = "gpt-4o-mini", b" " * 80
        pending = stage.on_request(caller, ctx)  # type: ignore[arg-type]
        if pending is not None:
            await pending
        admission = ctx.admission
        assert admission is not None
        limits.settle(admission, 30)
    return (time.perf_counter() - started) / requests


async def measure(redis: str, tmp: Path, requests: int, repeat: int) -> dict[str, float]:
    built = variants(redis, tmp)
    caller = Caller()
    best = dict.fromkeys(built, float("inf"))
    for limits in built.values():  # warm: counters loaded, script loaded, sync tasks running
        await once(limits, caller, 1000)
        await asyncio.sleep(0.1)
    for _ in range(repeat):
        for label, limits in built.items():
            best[label] = min(best[label], await once(limits, caller, requests))
            await asyncio.sleep(0)  # let the syncs run between runs
    for limits in built.values():
        await limits.aclose()
    return {label: seconds * 1e6 for label, seconds in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-admission-bench-"))
    with Processes(tmp) as procs:
        results = uvloop.run(measure(start_redis(procs, tmp), tmp, args.requests, args.repeat))
    print("| admission + settle | µs per request |")
    print("|---|---:|")
    for label, micros in results.items():
        log(f"{label}: {micros:.2f} us")
        print(f"| {label} | {micros:.2f} |")
    return 0


if __name__ == "__main__":
    run_main(main)
