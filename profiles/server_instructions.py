"""Instructions one request costs the whole gateway worker (Granian's threads included), under callgrind.

    .venv/bin/python profiles/server_instructions.py 'observability: {metrics: false}' \\
        'observability: {metrics: true}' [...] [--requests 3000] [--warmup 500] [--connections 1] \\
        [--slowdown 40] [--pythonpath DIR]

For each config snippet (``{upstream}`` in it stands for the upstream's URL): the upstream (a Python
server answering the benchmark's real OpenAI chat.completion with nginx's head) in this process;
``sluice serve`` with one worker on CPU 0 under ``valgrind --tool=callgrind --trace-children=yes``;
``--warmup`` keep-alive POSTs (with ``Authorization: Bearer`` the benchmark's key, as wrk sends them),
then the worker's counters are zeroed (``callgrind_control -z``), N more requests are sent (over
``--connections`` keep-alive connections at once, one client thread each) and the counters dumped.
Instructions per request = the dump's total / N.  Instruction counts do not depend on the machine's
load, so this decides where wall-clock throughput on a shared machine cannot; what it does not see is
the cost of cache misses and of the kernel (syscalls).  The measuring itself (timers stretched by
``--slowdown``, the upstream, the client) is ``callgrind_worker.py``, shared with the performance gate
(``instruction_gate.py``).

With one connection the requests come one at a time; with many, Granian and the event loop amortise
some of their per-request work (several requests per loop iteration), so a request costs fewer
instructions and the same added work is a larger share.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import callgrind_worker as cw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("snippets", nargs="+", help="config snippets (YAML), one measurement each")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=500, help="requests before the counters are zeroed")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--slowdown", type=float, default=40.0, help="timer intervals are multiplied by this")
    parser.add_argument("--pythonpath", help="run sluice from this directory (another version's src/)")
    args = parser.parse_args()
    if missing := cw.tools_missing():
        print(f"{', '.join(missing)} needed (apt-get install valgrind)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="sluice-instructions-"))
    results = []
    with cw.session(tmp) as (procs, upstream):
        for i, snippet in enumerate(args.snippets):
            results.append((snippet, cw.measure(procs, tmp, f"gateway-{i}", snippet, upstream,
                                                requests=args.requests, warmup=args.warmup,
                                                connections=args.connections, slowdown=args.slowdown,
                                                pythonpath=args.pythonpath)))
    loop_base, base = results[0][1].loop, results[0][1].total
    print(f"\ninstructions per request ({args.requests} requests after {args.warmup}, {args.connections} "
          "connection(s)): the event loop's thread (where all of sluice runs), then all of the worker's threads "
          "(Granian's too; their spinning makes this noisier)")
    for snippet, m in results:
        print(f"{m.loop:10,.0f}  {m.loop - loop_base:+9,.0f}  {m.loop / loop_base:6.3f}   {m.total:10,.0f}  "
              f"{m.total - base:+9,.0f}  {m.total / base:6.3f}  {snippet}  ({m.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    cw.h.run_main(main)
