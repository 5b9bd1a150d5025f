"""Profiles the gateway's worker under load with py-spy: nginx static upstream, one worker on CPU 0.

    .venv/bin/python profiles/pyspy.py [--connections 4] [--duration 10] [--out profiles/NAME.txt]

Writes py-spy's collapsed stacks (--format raw) to profiles/*.raw (git-ignored) and a summary of
the top functions by own time and by total time to the --out file, which is committed with the
optimisation it motivated.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import _harness as h

ROOT = Path(__file__).resolve().parent.parent


def summarise(raw: Path, top: int = 30) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"samples: {samples}", "", "## own time", ""]
    lines += [f"{100 * n / samples:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "## total time (inclusive)", ""]
    lines += [f"{100 * n / samples:5.1f}%  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "profiles" / "latest.txt")
    parser.add_argument("--config", default="", help="a YAML snippet added to the gateway's config")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-profile-"))
    upstream_port, gateway_port = h.free_port(), h.free_port()
    with h.Processes(tmp) as procs:
        conf = h.nginx_static_conf(tmp, "u1", upstream_port)
        procs.start("u1", h.nginx_argv(tmp, conf, "u1"), cpu=1)
        config = tmp / "gateway.yaml"
        config.write_text(f"""{args.config}
providers: {{u1: {{kind: openai, base_url: "http://127.0.0.1:{upstream_port}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: u1, model: gpt-4o-mini}}]}}}}
""")
        gateway = procs.start("gateway", [str(ROOT / ".venv/bin/sluice"), "serve", "--config", str(config),
                                          "--port", str(gateway_port), "--workers", "1"], cpu=0)
        h.wait_ready(gateway, gateway_port, model="gpt-4o-mini")
        worker = subprocess.run(["pgrep", "-P", str(gateway.popen.pid)], capture_output=True, text=True)
        pid = worker.stdout.split()[0]
        raw = args.out.with_suffix(".raw")
        spy = subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "--pid", pid, "--format", "raw",
                                "--rate", "500", "--duration", str(int(args.duration)), "--output", str(raw),
                                "--nonblocking", "--gil"])
        time.sleep(0.5)
        result = h.run_wrk("gateway", gateway_port, connections=args.connections, duration=args.duration - 1,
                           model="gpt-4o-mini", cpu=1)
        spy.wait(timeout=args.duration + 30)
    args.out.write_text(f"# py-spy, {args.connections} connections, {result.rps:,.0f} req/s\n\n" + summarise(raw))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
