"""A feature on against off, in one run: the same gateway config with and without a YAML snippet.

    .venv/bin/python bench/feature_ab.py --name "access log" \\
        --on 'observability: {access_log: true, access_log_path: /dev/null}' \\
        --off 'observability: {access_log: false}' [--rounds 3] [--duration 8]

Both gateways (one Granian worker each, CPU 0, started once) forward to nginx's static
answer (CPU 1, like wrk). Rounds alternate on and off so a drifting machine spreads over
both; the report gives per-metric medians at 64 connections (throughput) and at 4
connections (latency), and the on/off ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _harness import (
    ROOT,
    VENV_BIN,
    Processes,
    WrkResult,
    ensure_wrk,
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
    table,
    wait_ready,
)

MODEL = "gpt-4o-mini"


def gateway_yaml(upstream_port: int, snippet: str) -> str:
    return f"""{snippet}
providers: {{u1: {{kind: openai, base_url: "http://127.0.0.1:{upstream_port}"}}}}
models: {{{MODEL}: {{targets: [{{provider: u1, model: {MODEL}}}]}}}}
"""


def median(results: list[WrkResult], field: str) -> float:
    return statistics.median(getattr(r, field) for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--on", required=True, help="YAML snippet that turns the feature on")
    parser.add_argument("--off", required=True, help="YAML snippet that turns it off")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8)
    args = parser.parse_args()
    ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-ab-"))
    results: dict[tuple[str, int], list[WrkResult]] = {}
    with Processes(tmp) as procs:
        upstream_port = free_port()
        procs.start("u1", nginx_argv(tmp, nginx_static_conf(tmp, "u1", upstream_port), "u1"), cpu=1)
        ports = {}
        for variant, snippet in (("on", args.on), ("off", args.off)):
            config = tmp / f"{variant}.yaml"
            config.write_text(gateway_yaml(upstream_port, snippet))
            ports[variant] = free_port()
            proc = procs.start(f"gateway-{variant}", [str(VENV_BIN / "sluice"), "serve", "--config", str(config),
                                                      "--port", str(ports[variant]), "--workers", "1"], cpu=0)
            wait_ready(proc, ports[variant], model=MODEL)
            run_wrk(f"warm-up {variant}", ports[variant], connections=64, duration=2, model=MODEL, cpu=1)
        for _ in range(args.rounds):
            for variant in ("on", "off"):
                for connections in (64, 4):
                    result = run_wrk(f"{args.name} {variant}", ports[variant], connections=connections,
                                     duration=args.duration, model=MODEL, cpu=1)
                    results.setdefault((variant, connections), []).append(result)
    rows = []
    for connections in (64, 4):
        on, off = results[("on", connections)], results[("off", connections)]
        rows.append([f"{connections} conns", f"{median(off, 'rps'):,.0f}", f"{median(on, 'rps'):,.0f}",
                     fmt_ratio(median(on, "rps"), median(off, "rps")), fmt_ms(median(off, "p50")),
                     fmt_ms(median(on, "p50")), fmt_ms(median(off, "p99")), fmt_ms(median(on, "p99"))])
    errors = sum(r.errors for runs in results.values() for r in runs)
    report = "\n".join([
        f"# {args.name}: on against off", "", facts_table(machine_facts()), "",
        f"on: `{args.on}`  ", f"off: `{args.off}`  ",
        f"{args.rounds} alternating rounds of {args.duration:.0f} s per variant and concurrency; medians.", "",
        table(["load", "req/s off", "req/s on", "on/off", "p50 off", "p50 on", "p99 off", "p99 on"], rows),
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
