"""Instructions one request costs the whole gateway worker (Granian's threads included), under callgrind.

    .venv/bin/python profiles/server_instructions.py 'observability: {metrics: false}' \\
        'observability: {metrics: true}' [...] [--requests 3000] [--connections 1] [--slowdown 40] [--pythonpath DIR]

For each config snippet: nginx's static chat answer (bench/) on CPU 1; ``sluice serve`` with one
worker on CPU 0 under ``valgrind --tool=callgrind --trace-children=yes``; 500 keep-alive POSTs to
warm up, then the worker's counters are zeroed (``callgrind_control -z``), N more requests are sent
(over ``--connections`` keep-alive connections at once, one client thread each) and the counters
dumped.  Instructions per request = the dump's total / N.  Instruction
counts do not depend on the machine's load, so this decides where wall-clock throughput on a shared
machine cannot; what it does not see is the cost of cache misses and of the kernel (syscalls).

Timers run on wall-clock time, which valgrind stretches ``--slowdown`` times (measured here: about 37
times at one connection), so a snapshot every second or a log flush every 50 ms would fire that many
times more often per request than in a real server and be charged to every request.  The worker is
started with those intervals multiplied by ``--slowdown`` (a sitecustomize that changes the
defaults of ``Metrics`` and ``AccessLog``), so that they fire about as often per request as they
would unslowed.  With one connection the requests come one at a time; with many, Granian and the
event loop amortise some of their per-request work (several requests per loop iteration), so a
request costs fewer instructions and the same added work is a larger share.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import _harness as h

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
SITECUSTOMIZE = """\
from sluice.observability.access_log import AccessLog
from sluice.observability.metrics import Metrics

Metrics.__init__.__kwdefaults__["flush_interval_s"] *= {slowdown}
AccessLog.__init__.__kwdefaults__["flush_interval_s"] *= {slowdown}
"""


def send(port: int, count: int, connections: int = 1) -> None:
    """``count`` POSTs over ``connections`` keep-alive connections at once (one thread each)."""
    failures: list[str] = []

    def one(share: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            for _ in range(share):
                connection.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(f"the gateway answered {response.status}")
                    return
        except (OSError, http.client.HTTPException) as exc:
            failures.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(count // connections + (i < count % connections),))
               for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise h.BenchError(failures[0])


def wait_up(port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            send(port, 1)
            return
        except (OSError, h.BenchError, http.client.HTTPException):
            time.sleep(2)
    raise h.BenchError(f"the gateway did not answer within {timeout:.0f} s")


def measure(procs: h.Processes, tmp: Path, name: str, snippet: str, upstream_port: int, requests: int,
            connections: int, pythonpath: str | None) -> tuple[float, float]:
    """(instructions per request of the event loop's thread, of all the worker's threads)."""
    config = tmp / f"{name}.yaml"
    config.write_text(f"""{snippet}
providers: {{u1: {{kind: openai, base_url: "http://127.0.0.1:{upstream_port}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: u1, model: gpt-4o-mini}}]}}}}
""")
    port = h.free_port()
    out = tmp / f"{name}.callgrind"
    # A fixed hash seed: the same dict probes in every run, so that runs differ only by what they run.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp / "site"), pythonpath])),
           "PYTHONHASHSEED": "0"}
    proc = procs.start(name, ["valgrind", "--tool=callgrind", "--trace-children=yes", "--separate-threads=yes",
                              f"--callgrind-out-file={out}.%p", str(ROOT / ".venv/bin/sluice"), "serve", "--config",
                              str(config), "--port", str(port), "--workers", "1"], cpu=0, env=env)
    wait_up(port, 300)
    workers = subprocess.run(["pgrep", "-P", str(proc.popen.pid)], capture_output=True, text=True).stdout.split()
    worker = workers[-1]
    send(port, 500, connections)
    subprocess.run(["callgrind_control", "-z", worker], check=True, capture_output=True)
    send(port, requests, connections)
    subprocess.run(["callgrind_control", "-d", worker], check=True, capture_output=True)
    time.sleep(2)
    procs.stop(proc)
    threads = {}  # thread number -> instructions since the zeroing: the dump's part 1 (-z then -d)
    for dump in tmp.glob(f"{name}.callgrind.{worker}.1-*"):
        totals = [line for line in dump.read_text().splitlines() if line.startswith("totals:")]
        threads[int(dump.name.rsplit("-", 1)[1])] = int(totals[0].split()[1]) if totals else 0
    if not threads:
        raise h.BenchError(f"no callgrind dump of worker {worker} in {tmp}")
    return threads[min(threads)] / requests, sum(threads.values()) / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("snippets", nargs="+", help="config snippets (YAML), one measurement each")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--slowdown", type=float, default=40.0, help="timer intervals are multiplied by this")
    parser.add_argument("--pythonpath", help="run sluice from this directory (another version's src/)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed", file=sys.stderr)
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="sluice-instructions-"))
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE.format(slowdown=args.slowdown))
    results = []
    with h.Processes(tmp) as procs:
        upstream_port = h.free_port()
        procs.start("u1", h.nginx_argv(tmp, h.nginx_static_conf(tmp, "u1", upstream_port), "u1"), cpu=1)
        for i, snippet in enumerate(args.snippets):
            results.append((snippet, measure(procs, tmp, f"gateway-{i}", snippet, upstream_port, args.requests,
                                             args.connections, args.pythonpath)))
    (loop_base, base) = results[0][1]
    print(f"\ninstructions per request ({args.requests} requests, {args.connections} connection(s)): the event "
          "loop's thread (where all of sluice runs), then all of the worker's threads (Granian's too; their "
          "spinning makes this noisier)")
    for snippet, (loop, total) in results:
        print(f"{loop:10,.0f}  {loop - loop_base:+9,.0f}  {loop / loop_base:6.3f}   {total:10,.0f}  "
              f"{total - base:+9,.0f}  {total / base:6.3f}  {snippet}")
    return 0


if __name__ == "__main__":
    h.run_main(main)
