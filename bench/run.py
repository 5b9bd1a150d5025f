"""The sluice benchmark: throughput and latency overhead of one gateway worker on one core.

    .venv/bin/python bench/run.py [--duration S] [--quick] [--repeat N]

Starts (each pinned with taskset; the server under test on CPU 0, the load side on CPU 1):

  u1  nginx answering every chat POST with a fixed chat.completion (fast upstream), CPU 1
  u2  `sluice mock-upstream --latency-ms 50` (a provider with realistic latency), CPU 1
  r   nginx as a keep-alive reverse proxy to u1, the C reference, CPU 0
  g   `sluice serve --workers 1` (RSGI), and the same with `--interface asgi`, CPU 0
      (model gpt-4o-mini -> u1, model gpt-4o -> u2)

then drives them with `wrk --latency -t1 -cC -dD -s bench/post.lua` on CPU 1:

  A  throughput at 64 connections: u1 direct, nginx proxy, sluice rsgi, sluice asgi
  B  overhead at 1 and 4 connections against u1: direct vs sluice (p50/p90/p99)
  C  overhead at 4 connections against u2 (50 ms): direct vs sluice
  D  drift check: scenario A's sluice rsgi run again at the very end

It prints a markdown report and writes it to bench/results/latest.md.  A
benchmark, not a test: it exits 0 whenever it could measure, targets met or not.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    ROOT,
    VENV_BIN,
    BenchError,
    CpuMeter,
    Deadline,
    Pinning,
    Processes,
    WrkResult,
    ensure_tools,
    facts_table,
    fmt_delta,
    fmt_ms,
    fmt_other,
    fmt_ratio,
    free_port,
    group_rss_kib,
    keep_logs,
    loadavg,
    log,
    machine_facts,
    nginx_argv,
    nginx_proxy_conf,
    nginx_static_conf,
    run_main,
    run_wrk,
    src_change_note,
    src_fingerprint,
    table,
    temp_dir,
    wait_ready,
    write_result,
)

FAST_MODEL = "gpt-4o-mini"  # sluice routes it to u1
SLOW_MODEL = "gpt-4o"  # sluice routes it to u2 (the mock knows both names)
TARGET_RPS = 17_000
TARGET_P50_MS = 0.3
TARGET_P99_MS = 1.0


@dataclass
class Target:
    key: str
    label: str
    port: int
    model: str


def gateway_config(path: Path, port: int, u1_port: int, u2_port: int) -> None:
    path.write_text(f"""# Written by bench/run.py: two providers, one model on each.
server:
  host: 127.0.0.1
  port: {port}
  workers: 1
  grace_period_s: 5

# The access log is on (the default pipeline): its lines are formatted and written, to /dev/null rather than
# to the server log that bench/results/ keeps (a run makes millions of them).
observability:
  access_log_path: /dev/null

providers:
  fast:
    kind: openai
    base_url: http://127.0.0.1:{u1_port}
    api_keys: ["sk-bench-fast"]
  slow:
    kind: openai
    base_url: http://127.0.0.1:{u2_port}
    api_keys: ["sk-bench-slow"]

models:
  {FAST_MODEL}:
    targets:
      - provider: fast
        model: {FAST_MODEL}
  {SLOW_MODEL}:
    targets:
      - provider: slow
        model: {SLOW_MODEL}
""")


def median_result(runs: list[WrkResult]) -> WrkResult:
    """Per-metric median of repeated runs (errors summed); the run itself when there is one."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    return WrkResult(
        label=first.label, connections=first.connections,
        rps=statistics.median(r.rps for r in runs),
        p50=statistics.median(r.p50 for r in runs),
        p90=statistics.median(r.p90 for r in runs),
        p99=statistics.median(r.p99 for r in runs),
        requests=sum(r.requests for r in runs),
        non_2xx=sum(r.non_2xx for r in runs),
        socket_errors=sum(r.socket_errors for r in runs),
        other_cpu={cpu: max(r.other_cpu.get(cpu, 0.0) for r in runs) for cpu in first.other_cpu},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 10, --quick 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s per run, 1 s warm-up")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per measurement, interleaved; the report shows per-metric medians (default 1)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up per server (default 2)")
    args = parser.parse_args()
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    repeat = max(1, args.repeat)
    if duration < 1:
        parser.error("--duration must be at least 1 s")

    ensure_tools()
    facts = machine_facts()
    fingerprint = src_fingerprint()  # before any load: the load average is the machine's own
    pin = Pinning.detect()
    log(pin.note)
    have_nginx = shutil.which("nginx") is not None
    if not have_nginx:
        log("nginx is not installed: u1 is `sluice mock-upstream` (no latency) and the nginx-proxy "
            "reference is skipped")

    runs = repeat * 13 + 1  # A 4 + B 6 + C 3, repeated; D 1
    bound = 120 + 6 * (warmup + 35) + runs * (duration + 35)
    log(f"{runs} wrk runs of {duration:.0f} s (+ warm-ups); hard time bound {bound:.0f} s")

    with Deadline(bound), temp_dir("sluice-bench-") as tmp, Processes(tmp) as procs:
        kept: Path | None = None
        try:
            started = time.monotonic()
            # -- upstreams (CPU 1) --
            u1_port, u2_port, r_port, r2_port = free_port(), free_port(), free_port(), free_port()
            if have_nginx:
                u1 = procs.start("u1-nginx", nginx_argv(tmp, nginx_static_conf(tmp, "u1", u1_port), "u1"),
                                 cpu=pin.load)
                u1_kind = "nginx `return 200` (static chat.completion)"
            else:
                u1 = procs.start("u1-mock", [str(VENV_BIN / "sluice"), "mock-upstream", "--port", str(u1_port)],
                                 cpu=pin.load)
                u1_kind = "sluice mock-upstream, 0 ms (nginx not installed)"
            u2 = procs.start("u2-mock50", [str(VENV_BIN / "sluice"), "mock-upstream", "--port", str(u2_port),
                                           "--latency-ms", "50"], cpu=pin.load)
            wait_ready(u1, u1_port, model=FAST_MODEL)
            wait_ready(u2, u2_port, model=SLOW_MODEL)

            # -- servers under test (CPU 0) --
            proxy = None
            if have_nginx:
                conf = nginx_proxy_conf(tmp, "r", [(r_port, u1_port), (r2_port, u2_port)])
                proxy = procs.start("r-nginx-proxy", nginx_argv(tmp, conf, "r"), cpu=pin.server)
            config = tmp / "sluice-bench.yaml"
            g_port, a_port = free_port(), free_port()
            gateway_config(config, g_port, u1_port, u2_port)
            sluice = str(VENV_BIN / "sluice")
            rsgi = procs.start("g-sluice-rsgi", [sluice, "serve", "--config", str(config), "--port", str(g_port),
                                                 "--workers", "1"], cpu=pin.server, cwd=ROOT)
            asgi = procs.start("g-sluice-asgi", [sluice, "serve", "--config", str(config), "--port", str(a_port),
                                                 "--workers", "1", "--interface", "asgi"], cpu=pin.server, cwd=ROOT)
            if proxy is not None:
                wait_ready(proxy, r_port, model=FAST_MODEL)
                wait_ready(proxy, r2_port, model=SLOW_MODEL)
            body = wait_ready(rsgi, g_port, model=FAST_MODEL)
            if b"chat.completion" not in body:
                raise BenchError(f"sluice answered something unexpected: {body[:300]!r}")
            wait_ready(rsgi, g_port, model=SLOW_MODEL)
            wait_ready(asgi, a_port, model=FAST_MODEL)

            direct = Target("direct", "u1 direct", u1_port, FAST_MODEL)
            ref = Target("nginx", "nginx proxy -> u1", r_port, FAST_MODEL) if proxy is not None else None
            g_rsgi = Target("rsgi", "sluice rsgi -> u1", g_port, FAST_MODEL)
            g_asgi = Target("asgi", "sluice asgi -> u1", a_port, FAST_MODEL)
            direct2 = Target("direct50", "u2 (50 ms) direct", u2_port, SLOW_MODEL)
            ref2 = Target("nginx50", "nginx proxy -> u2 (50 ms)", r2_port, SLOW_MODEL) if proxy is not None else None
            g_rsgi2 = Target("rsgi50", "sluice rsgi -> u2 (50 ms)", g_port, SLOW_MODEL)

            meter = CpuMeter(procs, pin.load)

            def measure(target: Target, connections: int, seconds: float = duration) -> WrkResult:
                return run_wrk(target.label, target.port, connections=connections, duration=seconds,
                               model=target.model, cpu=pin.load, meter=meter)

            # -- warm-up --
            for target in (direct, ref, g_rsgi, g_asgi):
                if target is not None:
                    measure(target, 64, warmup)
            for target in (direct2, ref2, g_rsgi2):
                if target is not None:
                    measure(target, 4, warmup)
            rss_start = group_rss_kib(rsgi.popen.pid)

            # -- scenarios, each measurement repeated (interleaved) --
            results: dict[tuple[str, int], list[WrkResult]] = {}

            def record(target: Target | None, connections: int) -> None:
                if target is None:
                    return
                result = measure(target, connections)
                results.setdefault((target.key, connections), []).append(result)

            for _ in range(repeat):  # A
                for target in (direct, ref, g_rsgi, g_asgi):
                    record(target, 64)
            for _ in range(repeat):  # B (nginx proxy: the control, a C proxy on the same core)
                for connections in (1, 4):
                    for target in (direct, ref, g_rsgi):
                        record(target, connections)
            for _ in range(repeat):  # C
                for target in (direct2, ref2, g_rsgi2):
                    record(target, 4)
            drift = measure(g_rsgi, 64)  # D
            rss_end = group_rss_kib(rsgi.popen.pid)

            for proc in procs.procs:
                if proc.popen.poll() is not None:
                    log(f"WARNING: {proc.name} exited during the run (code {proc.popen.returncode})")
            elapsed = time.monotonic() - started
        finally:
            procs.stop_all()
            kept = keep_logs(tmp, "logs")

    report = render(facts, results, drift, repeat=repeat, duration=duration, warmup=warmup, pin=pin, u1_kind=u1_kind,
                    rss=(rss_start, rss_end), elapsed=elapsed, logs=kept)
    note = src_change_note(fingerprint)
    if note is not None:
        log(note)
        report += f"\n{note}\n"
    print(report)
    path = write_result("latest.md", report)
    log(f"written to {path}")
    return 0


def render(facts: list[tuple[str, str]], results: dict[tuple[str, int], list[WrkResult]], drift: WrkResult, *,
           repeat: int, duration: float,
           warmup: float, pin: Pinning, u1_kind: str, rss: tuple[int, int], elapsed: float,
           logs: Path | None) -> str:
    m = {key: median_result(runs) for key, runs in results.items()}
    out: list[str] = ["# sluice benchmark", ""]
    out.append(facts_table([*facts, *{
        "load average at end": loadavg(),
        "pinning": pin.note,
        "u1 (fast upstream)": u1_kind,
        "u2": "sluice mock-upstream --latency-ms 50",
        "wrk runs": f"-t1, {duration:.0f} s per run, {warmup:.0f} s warm-up per server, "
               f"{repeat} run(s) per row" + (" (per-metric median)" if repeat > 1 else ""),
        "whole run": f"{elapsed:.0f} s",
    }.items()]))

    def row(scenario: str, key: str, connections: int) -> list[str] | None:
        r = m.get((key, connections))
        if r is None:
            return None
        return [scenario, r.label, str(connections), f"{r.rps:,.0f}", fmt_ms(r.p50), fmt_ms(r.p90), fmt_ms(r.p99),
                str(r.non_2xx), str(r.socket_errors), fmt_other(r.other_cpu)]

    rows = [
        row("A", "direct", 64), row("A", "nginx", 64), row("A", "rsgi", 64), row("A", "asgi", 64),
        row("B", "direct", 1), row("B", "nginx", 1), row("B", "rsgi", 1),
        row("B", "direct", 4), row("B", "nginx", 4), row("B", "rsgi", 4),
        row("C", "direct50", 4), row("C", "nginx50", 4), row("C", "rsgi50", 4),
        ["D (drift)", drift.label + " (again, at the end)", str(drift.connections), f"{drift.rps:,.0f}",
         fmt_ms(drift.p50), fmt_ms(drift.p90), fmt_ms(drift.p99), str(drift.non_2xx), str(drift.socket_errors),
         fmt_other(drift.other_cpu)],
    ]
    out += ["", "## All runs (latencies in ms)", ""]
    out.append(table(["scenario", "target", "conns", "req/s", "p50", "p90", "p99", "non-2xx", "socket err",
                      "others' CPU0/CPU1 %"], [r for r in rows if r is not None], text_columns=2))
    out += ["", "\"others' CPU %\": how busy each CPU was with processes other than this benchmark's during "
                "the run (the highest of the repeats); the machine is shared, so a high figure on CPU 0 means "
                "the server under test lost time to someone else."]

    rsgi, direct = m[("rsgi", 64)], m[("direct", 64)]
    ratios = [["sluice rsgi / u1 direct", fmt_ratio(rsgi.rps, direct.rps)]]
    if ("nginx", 64) in m:
        ratios.append(["sluice rsgi / nginx proxy", fmt_ratio(rsgi.rps, m[("nginx", 64)].rps)])
    ratios.append(["sluice asgi / sluice rsgi", fmt_ratio(m[("asgi", 64)].rps, rsgi.rps)])
    ratios.append(["drift: rsgi at the end / rsgi in A", fmt_ratio(drift.rps, rsgi.rps)])
    out += ["", "## A. Throughput ratios (64 connections, req/s)", ""]
    out.append(table(["ratio", "value"], ratios))

    over_rows = []
    for upstream, d_key, proxies, connections in (
        ("u1 fast", "direct", (("sluice rsgi", "rsgi"), ("nginx proxy", "nginx")), 1),
        ("u1 fast", "direct", (("sluice rsgi", "rsgi"), ("nginx proxy", "nginx")), 4),
        ("u2 50 ms", "direct50", (("sluice rsgi", "rsgi50"), ("nginx proxy", "nginx50")), 4),
    ):
        d = m[(d_key, connections)]
        for name, key in proxies:
            p = m.get((key, connections))
            if p is None:
                continue
            over_rows.append([upstream, str(connections), name,
                              fmt_ms(d.p50), fmt_ms(p.p50), fmt_delta(p.p50 - d.p50),
                              fmt_ms(d.p90), fmt_ms(p.p90), fmt_delta(p.p90 - d.p90),
                              fmt_ms(d.p99), fmt_ms(p.p99), fmt_delta(p.p99 - d.p99),
                              fmt_ratio(p.rps, d.rps)])
    out += ["", "## B/C. Latency overhead against direct (ms); nginx proxy is the control", ""]
    out.append(table(["upstream", "conns", "via", "p50 direct", "p50 via", "Δp50", "p90 direct", "p90 via", "Δp90",
                      "p99 direct", "p99 via", "Δp99", "rps via/direct"], over_rows, text_columns=3))

    b4d, b4s = m[("direct", 4)], m[("rsgi", 4)]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out += ["", "## Against the targets (one worker, one core; informative, not a test)", ""]
    out.append(table(["target", "measured", "verdict"], [
        [f"sluice rsgi -> u1 at 64 conns ≥ {TARGET_RPS:,} req/s", f"{rsgi.rps:,.0f}", verdict(rsgi.rps >= TARGET_RPS)],
        [f"Δp50 at 4 conns (u1) ≤ {TARGET_P50_MS} ms", fmt_delta(b4s.p50 - b4d.p50),
         verdict(b4s.p50 - b4d.p50 <= TARGET_P50_MS)],
        [f"Δp99 at 4 conns (u1) ≤ {TARGET_P99_MS} ms", fmt_delta(b4s.p99 - b4d.p99),
         verdict(b4s.p99 - b4d.p99 <= TARGET_P99_MS)],
    ]))
    errors = sum(r.errors for runs in results.values() for r in runs) + drift.errors
    out += ["", f"Gateway (rsgi) resident memory, main process + worker: {rss[0] / 1024:.1f} MiB after warm-up, "
                f"{rss[1] / 1024:.1f} MiB at the end.",
            f"Non-2xx responses + socket errors over all measured runs: {errors}."]
    if logs is not None:
        out.append(f"Server logs of this run: {logs.relative_to(ROOT)}/")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    run_main(main)
