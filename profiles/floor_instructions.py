"""Instructions per request of the raw floor (bench/floor.py on Granian) next to sluice's three gate configs.

    .venv/bin/python profiles/floor_instructions.py [--requests 1000] [--pythonpath DIR]

The same measurement as the performance gate (profiles/callgrind_worker.py: one Granian worker under
callgrind, the benchmark's 324-byte request and 629-byte answer, 1 connection), for the floor and for
sluice bare, default and full, so that "how far from the floor" reads in instructions too, which no
other load on the machine moves (bench/README.md, "Where the time goes").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import callgrind_worker as cw
import instruction_gate as gate

from run import floor_argv


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--pythonpath", help="run another version of sluice (its src/ or an install --target)")
    args = parser.parse_args()
    missing = cw.tools_missing()
    if missing:
        print(f"needed: {', '.join(missing)}", file=sys.stderr)
        return 1
    results: dict[str, cw.Measurement] = {}
    with tempfile.TemporaryDirectory(prefix="sluice-floor-") as tmp, cw.session(Path(tmp)) as (procs, upstream):
        os.environ["BENCH_UPSTREAM_URL"] = upstream.url  # the floor forwards to the same upstream
        settings = {"requests": args.requests, "warmup": args.warmup, "connections": gate.CONNECTIONS,
                    "slowdown": gate.SLOWDOWN}
        results["floor"] = cw.measure(procs, Path(tmp), "floor", "", upstream, server=floor_argv, **settings)
        for name, snippet in gate.CONFIGS.items():
            results[name] = cw.measure(procs, Path(tmp), name, snippet, upstream, pythonpath=args.pythonpath,
                                       **settings)
    floor = results["floor"].loop
    print(f"\ninstructions per request, event-loop thread ({args.requests} requests, 1 connection):")
    for name, measured in results.items():
        print(f"  {name:8s} {measured.loop:10,.0f}   {measured.loop / floor:5.2f}x the floor   "
              f"(+{measured.loop - floor:,.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
