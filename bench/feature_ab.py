"""Features on against off, in one run: the same gateway config with different YAML snippets.

    .venv/bin/python bench/feature_ab.py --name "access log" \\
        --on 'observability: {access_log: true, access_log_path: /dev/null}' \\
        --off 'observability: {access_log: false}' [--rounds 3] [--duration 8]
    .venv/bin/python bench/feature_ab.py --name observability \\
        --variant 'all off=observability: {metrics: false, access_log: false}' \\
        --variant 'metrics+log=observability: {access_log: true, access_log_path: /dev/null}' ...

The first variant (``--off`` or the first ``--variant``) is the baseline; ``{upstream}`` in
a snippet is nginx's URL, which also accepts OTLP/HTTP trace exports at /v1/traces.  Every gateway
(one Granian worker each, CPU 0, started once) forwards to nginx's static answer (CPU 1,
like wrk). Rounds cycle through the variants so a drifting machine spreads over all; the
report gives per-metric medians per concurrency (default 64 for throughput and 1 for
latency) and each variant's ratio to the baseline.

With ``--together`` the throughput is measured differently, for a machine whose speed drifts (a shared
host: the same run can go from 12 K to 9 K req/s within minutes): every round loads all the gateways
at once, one wrk each (CPU 1), while they share CPU 0.  The kernel gives each busy worker an equal
share of the core, so each serves in proportion to what a request costs it, under the same machine
at the same moment.  The report gives, per variant, requests per second of the worker's own CPU time
(process group ticks from /proc: a gateway alone on a core would serve that many) and the median and
range of the per-round ratios to the baseline.  Latency is not measured in this mode.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
from pathlib import Path

from _harness import (
    ROOT,
    VENV_BIN,
    Proc,
    Processes,
    WrkResult,
    cpu_ticks,
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


def load_together(name: str, gateways: dict[str, tuple[Proc, int]], connections: int, duration: float
                  ) -> dict[str, tuple[WrkResult, float]]:
    """One round of ``--together``: every gateway under its own wrk at once; per label its wrk result and the
    CPU seconds its process group spent meanwhile."""
    results: dict[str, WrkResult] = {}
    failures: list[Exception] = []

    def one(label: str, port: int) -> None:
        try:
            results[label] = run_wrk(f"{name} {label} (together)", port, connections=connections,
                                     duration=duration, model=MODEL, cpu=1)
        except Exception as exc:  # re-raised below, in the caller's thread
            failures.append(exc)

    before = {label: cpu_ticks(proc) for label, (proc, _port) in gateways.items()}
    threads = [threading.Thread(target=one, args=(label, port)) for label, (_proc, port) in gateways.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return {label: (results[label], cpu_ticks(proc) - before[label]) for label, (proc, _port) in gateways.items()}


def together_report(rounds: list[dict[str, tuple[WrkResult, float]]], baseline: str, connections: int) -> list[str]:
    """Rows: per variant the median req/s, requests per CPU second, and the per-round ratios to the baseline."""
    rows = []
    for label in rounds[0]:
        rps = [r[label][0].rps for r in rounds]
        per_cpu = [r[label][0].requests / r[label][1] for r in rounds]
        base_per_cpu = [r[baseline][0].requests / r[baseline][1] for r in rounds]
        ratios = [mine / base for mine, base in zip(per_cpu, base_per_cpu, strict=True)]
        rows.append([f"{connections} conns", label, f"{statistics.median(rps):,.0f}",
                     f"{statistics.median(per_cpu):,.0f}", f"{statistics.median(ratios):.3f}",
                     f"{min(ratios):.3f} to {max(ratios):.3f}"])
    return rows


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
    parser.add_argument("--together", action="store_true",
                        help="throughput only: all variants loaded at once, sharing CPU 0 (see the top)")
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
    together: list[dict[str, tuple[WrkResult, float]]] = []
    with Processes(tmp) as procs:
        upstream_port = free_port()
        procs.start("u1", nginx_argv(tmp, nginx_static_conf(tmp, "u1", upstream_port), "u1"), cpu=1)
        redis_url = ""
        if args.redis:
            redis_url = start_redis(procs, tmp)
        ports, gateways = {}, {}
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
            gateways[label] = (proc, ports[label])
        for _ in range(args.rounds if args.together else 0):
            together.append(load_together(args.name, gateways, concurrencies[0], args.duration))
        for _ in range(0 if args.together else args.rounds):
            for label, _snippet in variants:
                for connections in concurrencies:
                    result = run_wrk(f"{args.name} {label}", ports[label], connections=connections,
                                     duration=args.duration, model=MODEL, cpu=1)
                    results.setdefault((label, connections), []).append(result)
    baseline = variants[0][0]
    if args.together:
        return report(args, variants, pythonpaths, [
            f"{args.rounds} rounds; in each, every variant under its own wrk at once ({args.duration:.0f} s), "
            "all the gateways sharing CPU 0. Per variant: median req/s (of the shared core), requests per CPU "
            "second of its worker, and that figure's ratio to the baseline's in the same round (median, range).",
            "", table(["load", "variant", "req/s (shared)", "req per CPU s", f"vs {baseline}", "rounds' range"],
                      together_report(together, baseline, concurrencies[0]), text_columns=2),
            "", f"Non-2xx responses + socket errors: {sum(r.errors for rnd in together for r, _ in rnd.values())}.",
        ])
    rows = []
    for connections in concurrencies:
        base = results[(baseline, connections)]
        for label, _snippet in variants:
            runs = results[(label, connections)]
            rows.append([f"{connections} conns", label, f"{median(runs, 'rps'):,.0f}",
                         fmt_ratio(median(runs, "rps"), median(base, "rps")), fmt_ms(median(runs, "p50")),
                         fmt_ms(median(runs, "p99"))])
    errors = sum(r.errors for runs in results.values() for r in runs)
    return report(args, variants, pythonpaths, [
        f"{args.rounds} rounds cycling the variants, {args.duration:.0f} s per variant and concurrency; medians.",
        "", table(["load", "variant", "req/s", f"vs {baseline}", "p50", "p99"], rows, text_columns=2),
        "", f"Non-2xx responses + socket errors: {errors}.",
    ])


def report(args: argparse.Namespace, variants: list[tuple[str, str]], pythonpaths: dict[str, str],
           body: list[str]) -> int:
    report = "\n".join([
        f"# {args.name}: variants against `{variants[0][0]}`", "", facts_table(machine_facts()), "",
        *(f"{label}: `{snippet}`" + (f" (sluice from `{pythonpaths[label]}`)" if label in pythonpaths else "") + "  "
          for label, snippet in variants), "", *body, "",
    ])
    out = ROOT / "bench" / "results" / "feature_ab.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)
    log(f"written to {out}")
    print(report)
    return 0


if __name__ == "__main__":
    run_main(main)
