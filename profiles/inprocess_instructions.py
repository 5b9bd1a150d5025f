"""Instructions per request of sluice's own path, without the server: ``Gateway.handle`` in a loop.

    .venv/bin/python profiles/inprocess_instructions.py [--requests 2000] [bare default full ...]
    .venv/bin/python profiles/inprocess_instructions.py --by-module [--requests 20000] bare

``--by-module`` runs the loop under cProfile instead (no valgrind) and prints each sluice package's share of
the own time (the upstream send syscall apart): an order of where the time goes, cProfile weighing many
small calls heavily.

For each of the gate's configs (profiles/instruction_gate.py), a Python process under ``valgrind
--tool=callgrind --instr-atstart=no`` builds the gateway, sends 300 requests through ``Gateway.handle``
with an in-memory exchange (the benchmark's 324-byte request, its API key), switches instrumentation on
(``callgrind_control -i on``), sends ``--requests`` more, and switches it off: instructions counted /
requests.  The upstream is real (the gate's: the benchmark's 629-byte answer over keep-alive HTTP/1.1),
so the upstream client is in the figure; Granian, the RSGI face and their threads are not.  Set against
the gate's whole-worker figure, it says what Granian's part of a request is (bench/README.md, "Where the
time goes").
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import callgrind_worker as cw
import instruction_gate as gate

WARMUP = 300


class MemoryExchange:
    """The Exchange interface with the benchmark's request; the answer is counted, not sent."""

    __slots__ = ("client", "method", "path", "query", "started", "status")

    def __init__(self) -> None:
        self.method, self.path, self.query, self.client = "POST", cw.CHAT_PATH, "", "127.0.0.1:1"
        self.started = False
        self.status = 0

    def header(self, name: str) -> str | None:
        return _HEADERS.get(name)

    async def read_body(self, limit: int) -> bytes:
        return cw.REQUEST_BODY

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.started = True
        self.status = status


_HEADERS = {**cw.REQUEST_HEADERS, "content-length": str(len(cw.REQUEST_BODY))}


async def _by_module(config_yaml: str, requests: int) -> None:
    import collections
    import cProfile
    import pstats

    from sluice.config import parse_config
    from sluice.server.app import Gateway

    gateway = Gateway(parse_config(config_yaml, {}))
    for _ in range(WARMUP):
        await gateway.handle(MemoryExchange())  # type: ignore[arg-type]
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(requests):
        await gateway.handle(MemoryExchange())  # type: ignore[arg-type]
    profiler.disable()
    await gateway.close()
    shares: collections.Counter[str] = collections.Counter()
    for (file, _, function), row in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        own = row[2]
        if function == "send_bytes":
            continue  # the send syscall: the kernel's, not sluice's
        if "/sluice/" in file:
            shares[file.split("/sluice/")[-1].split("/")[0].removesuffix(".py")] += own
        elif "inprocess_instructions" not in file:
            shares["C built-ins (dicts, futures, msgspec, ...)"] += own
    total = sum(shares.values())
    for name, own in shares.most_common():
        print(f"  {name:45s} {100 * own / total:5.1f} %")


async def _loop(config_yaml: str, requests: int) -> None:
    from sluice.config import parse_config
    from sluice.server.app import Gateway

    # The timers stretched by valgrind's slowdown, as the gate's worker has them (callgrind_worker.SITECUSTOMIZE).
    exec(cw.SITECUSTOMIZE.format(slowdown=gate.SLOWDOWN), {})

    gateway = Gateway(parse_config(config_yaml, {}))
    me = str(os.getpid())
    try:
        for _ in range(WARMUP):
            await gateway.handle(MemoryExchange())  # type: ignore[arg-type]
        subprocess.run(["callgrind_control", "-i", "on", me], check=True, capture_output=True)
        for _ in range(requests):
            ex = MemoryExchange()
            await gateway.handle(ex)  # type: ignore[arg-type]
            if ex.status != 200:
                raise SystemExit(f"the gateway answered {ex.status}")
        subprocess.run(["callgrind_control", "-i", "off", me], check=True, capture_output=True)
    finally:
        await gateway.close()


def measure(name: str, upstream_url: str, requests: int, workdir: Path) -> float:
    config = cw.gateway_yaml(gate.CONFIGS[name], upstream_url)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                           f"--callgrind-out-file={workdir / name}.callgrind", sys.executable, __file__, "--child",
                           str(requests)], input=config, capture_output=True, text=True, env=env, cwd=workdir,
                          check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{name}: the measurement failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return int(found.group(1)) / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*", default=list(gate.CONFIGS), help="of the gate's: bare default full")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--by-module", action="store_true", help="cProfile's shares by package instead")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.by_module:
        import uvloop

        with cw.Upstream() as upstream:
            for name in args.configs:
                print(f"{name}: own time by package ({args.requests} requests, cProfile)")
                uvloop.run(_by_module(cw.gateway_yaml(gate.CONFIGS[name], upstream.url), args.requests))
        return 0
    if args.child is not None:  # the measured process: the config on stdin
        import uvloop

        uvloop.run(_loop(sys.stdin.read(), args.child))
        return 0
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sluice-inprocess-") as tmp, cw.Upstream() as upstream:
        figures = {name: measure(name, upstream.url, args.requests, Path(tmp)) for name in args.configs}
    print(f"\ninstructions per request of Gateway.handle in-process ({args.requests} requests, after {WARMUP}):")
    for name, figure in figures.items():
        print(f"  {name:8s} {figure:10,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
