"""Upstream HTTP clients compared inside the same proxy shape.

    .venv/bin/python bench/client_compare.py [--duration S] [--quick] [--repeat N]

A tiny Granian RSGI app (bench/forwarders.py; one worker, uvloop, pinned to
CPU 0) forwards each POST body to the fast upstream u1 (nginx `return 200`,
CPU 1) and answers with the upstream body, using:

  (a) sluice.upstream.UpstreamClient   (forwarders:sluice_app)
  (b) aiohttp.ClientSession            (forwarders:aiohttp_app)
  (c) httpx.AsyncClient                (forwarders:httpx_app; only if httpx is importable)

Each is driven with `wrk --latency -t1 -c64` pinned to CPU 1.  Prints req/s,
p50 and p99 per client and the ratio to sluice's client, and writes the table to
bench/results/client_compare.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import time
from pathlib import Path

from _harness import (
    BENCH,
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
    fmt_ms,
    fmt_other,
    fmt_ratio,
    free_port,
    keep_logs,
    loadavg,
    log,
    machine_facts,
    nginx_argv,
    nginx_static_conf,
    package_version,
    run_main,
    run_wrk,
    src_change_note,
    src_fingerprint,
    table,
    temp_dir,
    wait_ready,
    write_result,
)
from run import median_result

MODEL = "gpt-4o-mini"
CONNECTIONS = 64

VARIANTS = [
    ("sluice", "sluice UpstreamClient", "sluice"),
    ("aiohttp", "aiohttp ClientSession", "aiohttp"),
    ("httpx", "httpx AsyncClient", "httpx"),
]


def granian_argv(factory: str, port: int) -> list[str]:
    granian = VENV_BIN / "granian"
    return [str(granian) if granian.exists() else "granian",
            "--interface", "rsgi", "--factory", "--loop", "uvloop", "--workers", "1",
            "--host", "127.0.0.1", "--port", str(port), "--http", "auto", "--no-ws", "--backlog", "2048",
            "--log-level", "warning", "--no-access-log", "--working-dir", str(BENCH), f"forwarders:{factory}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 10, --quick 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s per run, 1 s warm-up")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per client, interleaved; the report shows per-metric medians (default 1)")
    args = parser.parse_args()
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    repeat = max(1, args.repeat)

    ensure_tools()
    facts = machine_facts()
    fingerprint = src_fingerprint()
    pin = Pinning.detect()
    log(pin.note)
    variants = []
    skipped = []
    for key, label, module in VARIANTS:
        if importlib.util.find_spec(module) is None:
            skipped.append(f"{label}: `{module}` is not importable in this venv")
            log(f"skipping {label}: {module} is not importable")
        else:
            variants.append((key, label))
    have_nginx = shutil.which("nginx") is not None
    bound = 90 + len(variants) * (warmup + 35 + repeat * (duration + 35))

    results: dict[str, list[WrkResult]] = {}
    with Deadline(bound), temp_dir("sluice-clients-") as tmp, Processes(tmp) as procs:
        try:
            started = time.monotonic()
            u1_port = free_port()
            if have_nginx:
                u1 = procs.start("u1-nginx", nginx_argv(tmp, nginx_static_conf(tmp, "u1", u1_port), "u1"),
                                 cpu=pin.load)
                u1_kind = "nginx `return 200` (static chat.completion)"
            else:
                u1 = procs.start("u1-mock", [str(VENV_BIN / "sluice"), "mock-upstream", "--port", str(u1_port)],
                                 cpu=pin.load)
                u1_kind = "sluice mock-upstream, 0 ms (nginx not installed)"
            wait_ready(u1, u1_port, model=MODEL)

            env = {**os.environ, "BENCH_UPSTREAM_URL": f"http://127.0.0.1:{u1_port}",
                   "PYTHONPATH": os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH")) if p)}
            ports: dict[str, int] = {}
            for key, _label in variants:
                ports[key] = free_port()
                proc = procs.start(f"fwd-{key}", granian_argv(f"{key}_app", ports[key]), cpu=pin.server, env=env,
                                   cwd=ROOT)
                body = wait_ready(proc, ports[key], model=MODEL)
                if b"chat.completion" not in body:
                    raise BenchError(f"the {key} forwarder answered something unexpected: {body[:300]!r}")
            meter = CpuMeter(procs, pin.load)
            for key, label in variants:
                run_wrk(f"{label} (warm-up)", ports[key], connections=CONNECTIONS, duration=warmup, model=MODEL,
                        cpu=pin.load, meter=meter)
            for _ in range(repeat):
                for key, label in variants:
                    result = run_wrk(label, ports[key], connections=CONNECTIONS, duration=duration, model=MODEL,
                                     cpu=pin.load, meter=meter)
                    results.setdefault(key, []).append(result)
            for proc in procs.procs:
                if proc.popen.poll() is not None:
                    log(f"WARNING: {proc.name} exited during the run (code {proc.popen.returncode})")
            elapsed = time.monotonic() - started
        finally:
            procs.stop_all()
            kept = keep_logs(tmp, "logs-clients")

    report = render(facts, results, variants, skipped, duration=duration, warmup=warmup, repeat=repeat, pin=pin,
                    u1_kind=u1_kind, elapsed=elapsed, logs=kept)
    note = src_change_note(fingerprint)
    if note is not None:
        log(note)
        report += f"\n{note}\n"
    print(report)
    path = write_result("client_compare.md", report)
    log(f"written to {path}")
    return 0


def render(facts: list[tuple[str, str]], results: dict[str, list[WrkResult]], variants: list[tuple[str, str]],
           skipped: list[str], *, duration: float, warmup: float, repeat: int, pin: Pinning, u1_kind: str,
           elapsed: float, logs: Path | None) -> str:
    m = {key: median_result(runs) for key, runs in results.items()}
    base = m["sluice"]
    out = ["# Upstream client comparison", ""]
    out.append(facts_table([*facts, *{
        "load average at end": loadavg(),
        "aiohttp": package_version("aiohttp"),
        "httpx": package_version("httpx"),
        "pinning": pin.note,
        "upstream": u1_kind,
        "proxy": "Granian RSGI, 1 worker, uvloop, bench/forwarders.py",
        "wrk runs": f"-t1 -c{CONNECTIONS}, {duration:.0f} s per run, {warmup:.0f} s warm-up, {repeat} run(s) per row"
               + (" (per-metric median)" if repeat > 1 else ""),
        "whole run": f"{elapsed:.0f} s",
    }.items()]))
    rows = []
    for key, label in variants:
        r = m[key]
        runs = " / ".join(f"{x.rps:,.0f}" for x in results[key])
        rows.append([label, f"{r.rps:,.0f}", fmt_ms(r.p50), fmt_ms(r.p99), fmt_ratio(r.rps, base.rps),
                     str(r.non_2xx), str(r.socket_errors), fmt_other(r.other_cpu), runs])
    out += ["", f"## Forwarding proxy, {CONNECTIONS} connections (latencies in ms)", ""]
    out.append(table(["client", "req/s", "p50", "p99", "req/s vs sluice", "non-2xx", "socket err",
                      "others' CPU0/CPU1 %", "req/s of each run"], rows))
    for note in skipped:
        out.append(f"\nSkipped: {note}.")
    if logs is not None:
        out.append(f"\nServer logs of this run: {logs.relative_to(ROOT)}/")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    run_main(main)
