"""Features on against off, in one run: the same gateway config with different YAML snippets.

    .venv/bin/python bench/feature_ab.py --name "access log" \\
        --on 'observability: {access_log: true, access_log_path: /dev/null}' \\
        --off 'observability: {access_log: false}' [--rounds 3] [--duration 8]
    .venv/bin/python bench/feature_ab.py --name observability \\
        --variant 'all off=observability: {metrics: false}' \\
        --variant 'metrics+log=observability: {access_log: true, access_log_path: /dev/null}' ...

The first variant (``--off`` or the first ``--variant``) is the baseline; ``{upstream}`` in
a snippet is nginx's URL, which also accepts OTLP/HTTP trace exports at /v1/traces.  Every gateway
(one Granian worker each, CPU 0, started once) forwards to nginx's static answer (CPU 1,
like wrk). Rounds cycle through the variants so a drifting machine spreads over all; the
report gives per-metric medians per concurrency (default 64 for throughput and 1 for
latency) and each variant's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from _harness import (
    ROOT,
    VENV_BIN,
    Processes,
    WrkResult,
    ensure_tools,
    facts_table,
    fmt_ms,
    fmt_ratio,
    free_port,
    log,
    machine_facts,
    nginx_argv,
    nginx_static_conf,
    run_main,
    run_wrk,
    start_redis,
    table,
    wait_ready,
)

MODEL = "gpt-4o-mini"


def gateway_yaml(upstream_port: int, snippet: str) -> str:
    """The snippet (where ``{upstream}`` stands for nginx's URL, e.g. for a trace endpoint) and the route,
    unless the snippet has its own ``providers:`` and ``models:`` (e.g. several targets)."""
    snippet = snippet.replace("{upstream}", f"http://127.0.0.1:{upstream_port}")
    if "providers:" in snippet and "models:" in snippet:
        return snippet
    return f"""{snippet}
providers: {{u1: {{kind: openai, base_url: "http://127.0.0.1:{upstream_port}"}}}}
models: {{{MODEL}: {{targets: [{{provider: u1, model: {MODEL}}}]}}}}
"""


def median(results: list[WrkResult], field: str) -> float:
    return statistics.median(getattr(r, field) for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--on", help="YAML snippet that turns the feature on")
    parser.add_argument("--off", help="YAML snippet that turns it off (the baseline)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=YAML",
                        help="a labelled snippet; repeat it; the first is the baseline")
    parser.add_argument("--connections", default="64,1", help="comma-separated concurrencies")
    parser.add_argument("--pythonpath", action="append", default=[], metavar="LABEL=DIR",
                        help="run that variant's sluice from DIR (e.g. an older commit installed with "
                             "pip install --no-deps --target DIR), for before/after runs")
    parser.add_argument("--redis", action="store_true",
                        help="start a redis-server (CPU 1); {redis} in a snippet is its URL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8)
    args = parser.parse_args()
    variants = [tuple(v.split("=", 1)) for v in args.variant]
    if args.on is not None and args.off is not None:
        variants = [("off", args.off), ("on", args.on), *variants]
    if len(variants) < 2 or any(len(v) != 2 for v in variants):
        parser.error("give --on and --off, or at least two --variant LABEL=YAML")
    concurrencies = [int(c) for c in args.connections.split(",")]
    pythonpaths = dict(v.split("=", 1) for v in args.pythonpath)
    ensure_tools()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-ab-"))
    results: dict[tuple[str, int], list[WrkResult]] = {}
    with Processes(tmp) as procs:
        upstream_port = free_port()
        procs.start("u1", nginx_argv(tmp, nginx_static_conf(tmp, "u1", upstream_port), "u1"), cpu=1)
        redis_url = ""
        if args.redis:
            redis_url = start_redis(procs, tmp)
        ports = {}
        for i, (label, snippet) in enumerate(variants):
            config = tmp / f"variant-{i}.yaml"
            config.write_text(gateway_yaml(upstream_port, snippet.replace("{redis}", redis_url)))
            ports[label] = free_port()
            env = {**os.environ, "PYTHONPATH": pythonpaths[label]} if label in pythonpaths else None
            proc = procs.start(f"gateway-{i}", [str(VENV_BIN / "python"), "-m", "sluice", "serve", "--config",
                                                str(config), "--port", str(ports[label]), "--workers", "1"],
                               cpu=0, env=env)
            wait_ready(proc, ports[label], model=MODEL)
            run_wrk(f"warm-up {label}", ports[label], connections=64, duration=2, model=MODEL, cpu=1)
        for _ in range(args.rounds):
            for label, _snippet in variants:
                for connections in concurrencies:
                    result = run_wrk(f"{args.name} {label}", ports[label], connections=connections,
                                     duration=args.duration, model=MODEL, cpu=1)
                    results.setdefault((label, connections), []).append(result)
    baseline = variants[0][0]
    rows = []
    for connections in concurrencies:
        base = results[(baseline, connections)]
        for label, _snippet in variants:
            runs = results[(label, connections)]
            rows.append([f"{connections} conns", label, f"{median(runs, 'rps'):,.0f}",
                         fmt_ratio(median(runs, "rps"), median(base, "rps")), fmt_ms(median(runs, "p50")),
                         fmt_ms(median(runs, "p99"))])
    errors = sum(r.errors for runs in results.values() for r in runs)
    report = "\n".join([
        f"# {args.name}: variants against `{baseline}`", "", facts_table(machine_facts()), "",
        *(f"{label}: `{snippet}`" + (f" (sluice from `{pythonpaths[label]}`)" if label in pythonpaths else "") + "  "
          for label, snippet in variants), "",
        f"{args.rounds} rounds cycling the variants, {args.duration:.0f} s per variant and concurrency; medians.",
        "", table(["load", "variant", "req/s", f"vs {baseline}", "p50", "p99"], rows, text_columns=2),
        "", f"Non-2xx responses + socket errors: {errors}.", "",
    ])
    out = ROOT / "bench" / "results" / "feature_ab.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)
    log(f"written to {out}")
    print(report)
    return 0


if __name__ == "__main__":
    run_main(main)
