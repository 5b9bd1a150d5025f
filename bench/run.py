"""The sluice benchmark, in one run: how close one gateway worker on one core comes to the raw floor.

    .venv/bin/python bench/run.py [--quick] [--duration S] [--repeat N] [--warmup S] [--publish]

Starts (each pinned with taskset; the servers under test on CPU 0, the load side on CPU 1):

  u1       nginx answering every chat POST with a fixed 629-byte chat.completion (the fast upstream), CPU 1
  nginx    nginx `proxy_pass` to u1 with a keep-alive upstream block: the C reference, CPU 0
  floor    Granian RSGI (1 worker, uvloop) + bench/floor.py (asyncio protocol + httptools, pooled
           keep-alive connections, no parsing, no features): the raw floor, CPU 0
  bare     `sluice serve --workers 1`, observability {metrics: false, access_log: false}, CPU 0
  default  the same with the quickstart defaults: metrics + access log (written to /dev/null), CPU 0
  full     default + a static API key (auth on) + one local rate limit (never reached) + tracing on at
           sample_ratio 0 (nothing sampled; the traceparent still made and sent upstream), CPU 0

then drives each with `wrk --latency -t1 -cC -dD -s bench/post.lua` (a 324-byte chat request with an
`Authorization: Bearer` key) on CPU 1, in rounds (every target once per round, `--repeat` rounds; the
report gives per-metric medians):

  throughput  64 connections: req/s, and each gateway's share of the floor's req/s
  latency     1 connection: p50, p99, and what each proxy adds to direct (u1 alone) at p50 and p99

and finally the floor at 64 connections once more (drift check).  Targets (printed, never an exit
status): sluice bare >= 0.85x floor, sluice full >= 0.70x floor, added latency at 1 connection
<= 0.20 ms at p50 and <= 0.6 ms at p99.

Writes bench/results/latest.md (the report) and bench/results/latest.png (the chart).  --publish also
copies the chart to bench/chart.png, replaces the "Latest results" section of bench/README.md (between
its `<!-- results:begin -->` / `<!-- results:end -->` markers) and prints that section.  A benchmark, not
a test: it exits 0 whenever it could measure, targets met or not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    BENCH,
    BENCH_API_KEY,
    CHAT_COMPLETION,
    ROOT,
    VENV_BIN,
    BenchError,
    CpuMeter,
    Deadline,
    Pinning,
    Processes,
    WrkResult,
    chat_request,
    ensure_tools,
    facts_table,
    fmt_delta,
    fmt_ms,
    fmt_other,
    fmt_ratio,
    free_port,
    install_commit,
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

MODEL = "gpt-4o-mini"
THROUGHPUT_CONNS = 64
LATENCY_CONNS = 1
TARGET_BARE = 0.85  # sluice bare req/s / floor req/s, at least
TARGET_FULL = 0.70  # sluice full req/s / floor req/s, at least
TARGET_ADDED_P50_MS = 0.20  # at 1 connection, over direct, at most
TARGET_ADDED_P99_MS = 0.60
README = BENCH / "README.md"
LATEST_PNG = BENCH / "results" / "latest.png"
CHART = BENCH / "chart.png"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


@dataclass(frozen=True)
class Target:
    key: str
    label: str  # in tables and the chart
    what: str  # one line for the report


# In the order of the tables and the chart.
TARGETS = (
    Target("direct", "direct", "wrk straight to u1 (nginx `return 200`): what wrk and u1 cost, the baseline"),
    Target("nginx", "nginx proxy", "nginx `proxy_pass` to u1, keep-alive upstream, 1 worker: the C reference"),
    Target("floor", "raw floor", "Granian RSGI (1 worker, uvloop) + bench/floor.py: read the body, POST it "
                                 "upstream on a pooled keep-alive connection (asyncio + httptools), relay "
                                 "status, content-type and body"),
    Target("bare", "sluice bare", "`sluice serve --workers 1`, observability {metrics: false, access_log: false}"),
    Target("default", "sluice default", "the quickstart defaults: metrics + access log (to /dev/null)"),
    Target("full", "sluice full", "default + auth (a static key) + one local rate limit (never reached) + "
                                  "tracing at sample_ratio 0"),
)
PROXIES = tuple(t for t in TARGETS if t.key != "direct")
SLUICES = tuple(t for t in TARGETS if t.key in ("bare", "default", "full"))


# -- the gateway configs -------------------------------------------------------------------


def _config(port: int, u1_port: int, extra: str) -> str:
    return f"""# Written by bench/run.py.
server:
  host: 127.0.0.1
  port: {port}
  workers: 1
  grace_period_s: 5

{extra}
providers:
  fast:
    kind: openai
    base_url: http://127.0.0.1:{u1_port}
    api_keys: ["sk-bench-upstream"]

models:
  {MODEL}:
    targets:
      - provider: fast
        model: {MODEL}
"""


def gateway_configs(tmp: Path, ports: dict[str, int], u1_port: int) -> dict[str, Path]:
    """The three sluice configs, written into ``tmp``; their paths by target key."""
    texts = {
        "bare": """observability:
  metrics: false
  access_log: false
""",
        # The access log is on (the default): its lines are formatted and written, to /dev/null rather than to
        # the server log that bench/results/ keeps (a run makes millions of them).
        "default": """observability:
  access_log_path: /dev/null
""",
        # Tracing exports to u1, which answers OTLP/HTTP with an empty ExportTraceServiceResponse; at ratio 0
        # nothing is sampled, so nothing is exported.  The limit is far above anything one core serves.
        "full": f"""observability:
  access_log_path: /dev/null
  tracing:
    enabled: true
    endpoint: http://127.0.0.1:{u1_port}/v1/traces
    sample_ratio: 0.0

auth:
  enabled: true
  static_keys:
    - name: bench
      key: {BENCH_API_KEY}
      roles: [user]

store:
  sqlite_path: {tmp / "sluice-bench.db"}

ratelimit:
  quota_store: {tmp / "sluice-bench-quotas.db"}
  policies:
    - name: bench-per-key
      scope: key
      rate: 1000000000
      period_s: 1
      mode: local
""",
    }
    paths = {}
    for key, extra in texts.items():
        path = tmp / f"sluice-{key}.yaml"
        path.write_text(_config(ports[key], u1_port, extra))
        paths[key] = path
    return paths


def check_configs(paths: dict[str, Path], env: dict[str, str]) -> None:
    """`sluice check-config` on each: a config the gateway would refuse stops the run before it starts."""
    for key, path in paths.items():
        done = subprocess.run([str(VENV_BIN / "sluice"), "check-config", str(path)], capture_output=True, text=True,
                              timeout=60, cwd=path.parent, env=env)
        if done.returncode != 0:
            raise BenchError(f"sluice check-config refused the {key} config ({path}):\n{done.stdout}{done.stderr}\n"
                             f"{path.read_text()}")
        log(f"sluice check-config: {key} config OK")


def sluice_implementation(env: dict[str, str]) -> str:
    """The version and hot path (compiled or pure) of the sluice the servers import with ``env``."""
    code = "from sluice import __version__ as v; from sluice._native import IMPLEMENTATION as i; print(v, i)"
    done = subprocess.run([str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True, timeout=60,
                          env=env, cwd="/")
    if done.returncode != 0:
        return f"unavailable ({done.stderr.strip().splitlines()[-1:]})"
    version, implementation = done.stdout.split()
    return f"{version} (hot path: {implementation})"


def floor_argv(port: int) -> list[str]:
    """bench/floor.py under Granian, with the options `sluice serve` gives Granian (sluice/runner.py)."""
    granian = VENV_BIN / "granian"
    return [str(granian) if granian.exists() else "granian",
            "--interface", "rsgi", "--factory", "--loop", "uvloop", "--workers", "1",
            "--host", "127.0.0.1", "--port", str(port), "--http", "auto", "--no-ws", "--backlog", "2048",
            "--log-level", "warning", "--no-access-log", "--working-dir", str(BENCH), "floor:app"]


# -- results ---------------------------------------------------------------------------------


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


@dataclass
class Summary:
    """The figures of the headline table, per target key."""

    rps: dict[str, float]  # at 64 connections
    p50: dict[str, float]  # at 1 connection, ms
    p99: dict[str, float]

    def share(self, key: str) -> float:
        return self.rps[key] / self.rps["floor"] if self.rps.get("floor") else float("nan")

    def added_p50(self, key: str) -> float:
        return self.p50[key] - self.p50["direct"]

    def added_p99(self, key: str) -> float:
        return self.p99[key] - self.p99["direct"]


def summarise(results: dict[tuple[str, int], list[WrkResult]]) -> Summary:
    m = {key: median_result(runs) for key, runs in results.items()}
    return Summary(rps={t.key: m[(t.key, THROUGHPUT_CONNS)].rps for t in TARGETS},
                   p50={t.key: m[(t.key, LATENCY_CONNS)].p50 for t in TARGETS},
                   p99={t.key: m[(t.key, LATENCY_CONNS)].p99 for t in TARGETS})


def contention(results: dict[tuple[str, int], list[WrkResult]], pin: Pinning) -> str:
    """How busy the CPUs were with other processes during the measured runs, in one sentence."""
    server = [r.other_cpu.get(pin.server, 0.0) for (key, _), runs in results.items() if key != "direct" for r in runs
              if pin.server is not None]
    load = [r.other_cpu.get(pin.load, 0.0) for runs in results.values() for r in runs if pin.load is not None]
    if not server or not load:
        return "How busy the CPUs were with other processes is unknown (no pinning)."
    text = (f"Other processes used a median {statistics.median(server):.0f} % (at most {max(server):.0f} %) of CPU "
            f"{pin.server} during the proxies' runs, and a median {statistics.median(load):.0f} % of CPU {pin.load}")
    if statistics.median(server) > 10 or statistics.median(load) > 10:
        return text + ": **the machine was busy, so these figures are not those of a quiet machine**."
    return text + "."


def verdict(ok: bool) -> str:
    return "pass" if ok else "**miss**"


def headline_table(s: Summary) -> str:
    rows = []
    for t in TARGETS:
        direct = t.key == "direct"
        rows.append([t.label, f"{s.rps[t.key]:,.0f}", fmt_ratio(s.rps[t.key], s.rps["floor"]),
                     fmt_ms(s.p50[t.key]), fmt_ms(s.p99[t.key]),
                     "" if direct else fmt_delta(s.added_p50(t.key)),
                     "" if direct else fmt_delta(s.added_p99(t.key))])
    return table(["target", f"req/s at {THROUGHPUT_CONNS} conns", "x floor", "p50 at 1 conn", "p99 at 1 conn",
                  "added p50", "added p99"], rows)


def targets_table(s: Summary) -> str:
    def each(added: Callable[[str], float], bound: float) -> tuple[str, str]:
        return (" / ".join(f"{added(t.key):+.3f}" for t in SLUICES),
                " / ".join(verdict(added(t.key) <= bound) for t in SLUICES))

    p50_measured, p50_verdict = each(s.added_p50, TARGET_ADDED_P50_MS)
    p99_measured, p99_verdict = each(s.added_p99, TARGET_ADDED_P99_MS)
    return table(["target", "measured", "verdict"], [
        [f"sluice bare ≥ {TARGET_BARE:.2f}x floor (req/s, {THROUGHPUT_CONNS} conns)", f"{s.share('bare'):.2f}x",
         verdict(s.share("bare") >= TARGET_BARE)],
        [f"sluice full ≥ {TARGET_FULL:.2f}x floor (req/s, {THROUGHPUT_CONNS} conns)", f"{s.share('full'):.2f}x",
         verdict(s.share("full") >= TARGET_FULL)],
        [f"added p50 at 1 conn ≤ {TARGET_ADDED_P50_MS:.2f} ms (sluice bare / default / full)", p50_measured,
         p50_verdict],
        [f"added p99 at 1 conn ≤ {TARGET_ADDED_P99_MS:.1f} ms (sluice bare / default / full)", p99_measured,
         p99_verdict],
    ])


# -- the chart -------------------------------------------------------------------------------


def draw_chart(s: Summary, path: Path, subtitle: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.6), gridspec_kw={"width_ratios": [1.1, 1]})
    colours = {"direct": "#9e9e9e", "nginx": "#607d8b", "floor": "#2e7d32", "bare": "#1565c0",
               "default": "#1e88e5", "full": "#64b5f6"}

    labels = [t.label.replace("sluice ", "sluice\n") for t in TARGETS]
    values = [s.rps[t.key] for t in TARGETS]
    bars = left.bar(labels, values, color=[colours[t.key] for t in TARGETS])
    for bar, value in zip(bars, values, strict=True):
        left.annotate(f"{value:,.0f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                      fontsize=8, xytext=(0, 2), textcoords="offset points")
    floor = s.rps["floor"]
    for factor, style in ((TARGET_BARE, "--"), (TARGET_FULL, ":")):
        left.axhline(factor * floor, color="#c62828", linestyle=style, linewidth=1.2,
                     label=f"{factor:.2f}x floor ({factor * floor:,.0f})")
    left.set_ylabel(f"requests/s at {THROUGHPUT_CONNS} connections (one worker, one core)")
    left.set_title("Throughput")
    left.legend(loc="upper right", fontsize=8)
    left.tick_params(axis="x", labelsize=8)

    proxies = list(PROXIES)
    x = range(len(proxies))
    width = 0.38
    p50 = [s.added_p50(t.key) for t in proxies]
    p99 = [s.added_p99(t.key) for t in proxies]
    b50 = right.bar([i - width / 2 for i in x], p50, width, color="#1e88e5", label="added p50")
    b99 = right.bar([i + width / 2 for i in x], p99, width, color="#90caf9", label="added p99")
    for group in (b50, b99):
        for bar in group:
            value = bar.get_height()
            right.annotate(f"{value:+.3f}", (bar.get_x() + bar.get_width() / 2, max(value, 0)), ha="center",
                           va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    right.axhline(TARGET_ADDED_P50_MS, color="#c62828", linestyle="--", linewidth=1.2,
                  label=f"p50 target {TARGET_ADDED_P50_MS:.2f} ms")
    right.axhline(TARGET_ADDED_P99_MS, color="#c62828", linestyle=":", linewidth=1.2,
                  label=f"p99 target {TARGET_ADDED_P99_MS:.1f} ms")
    right.set_xticks(list(x), [t.label.replace("sluice ", "sluice\n") for t in proxies], fontsize=8)
    right.set_ylabel("ms added over direct, 1 connection (symlog scale)")
    right.set_title("Added latency")
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=8)
    # Symmetric log: one tail of hundreds of ms on a busy machine must not flatten the tenths of a ms.
    right.set_yscale("symlog", linthresh=0.1, linscale=0.5)
    top = max([*p99, *p50, TARGET_ADDED_P99_MS])
    right.set_ylim(min(0.0, *p50, *p99) * 1.5, top * 2.5)
    right.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))

    fig.suptitle(f"sluice against the raw floor: {subtitle}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 10, --quick 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s per run, 1 s warm-up, 1 round")
    parser.add_argument("--repeat", type=int, default=None,
                        help="rounds, each measuring every target once; the report shows per-metric medians "
                             "(default 3, --quick 1)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up per server (default 2)")
    parser.add_argument("--ref", metavar="REV",
                        help="measure sluice as committed at REV (e.g. HEAD), built once into "
                             "bench/results/builds/ from `git archive`, instead of the working tree (which others "
                             "may be editing)")
    parser.add_argument("--redraw", action="store_true",
                        help="measure nothing: draw results/latest.png again from results/latest.json (the last "
                             "run's figures); with --publish, copy it to bench/chart.png (the README untouched)")
    parser.add_argument("--publish", action="store_true",
                        help="also write bench/chart.png and the 'Latest results' section of bench/README.md, "
                             "and print that section")
    args = parser.parse_args()
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    repeat = max(1, args.repeat if args.repeat is not None else (1 if args.quick else 3))
    if duration < 1:
        parser.error("--duration must be at least 1 s")
    command = shlex.join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    if args.redraw:
        return redraw(publish=args.publish)

    ensure_tools()
    sluice_env = dict(os.environ)
    if args.ref:
        build, sha = install_commit(args.ref)
        sluice_env["PYTHONPATH"] = str(build)  # ahead of the editable install's path
    facts = machine_facts()
    if args.ref:
        facts = [(k, v) for k, v in facts if k not in ("git", "sluice")]
        facts.insert(0, ("sluice", f"{sluice_implementation(sluice_env)}, built from commit {sha[:12]} "
                                   f"(--ref {args.ref}; the working tree is not what ran)"))
        facts.insert(0, ("git", f"{sha[:7]} (--ref {args.ref})"))
    fingerprint = src_fingerprint()  # before any load: the load average is the machine's own
    pin = Pinning.detect()
    log(pin.note)

    runs = repeat * len(TARGETS) * 2 + 1  # throughput + latency per target per round; the drift check
    bound = 180 + len(TARGETS) * 2 * (warmup + 35) + runs * (duration + 35)
    log(f"{runs} wrk runs of {duration:.0f} s (+ warm-ups); hard time bound {bound:.0f} s")

    with Deadline(bound), temp_dir("sluice-bench-") as tmp, Processes(tmp) as procs:
        kept: Path | None = None
        try:
            started = time.monotonic()
            ports = {t.key: free_port() for t in TARGETS}
            configs = gateway_configs(tmp, ports, ports["direct"])
            check_configs(configs, sluice_env)

            # -- the upstream (CPU 1) --
            u1 = procs.start("u1-nginx", nginx_argv(tmp, nginx_static_conf(tmp, "u1", ports["direct"]), "u1"),
                             cpu=pin.load)
            body = wait_ready(u1, ports["direct"], model=MODEL)
            if body != CHAT_COMPLETION.encode():
                raise BenchError(f"u1 answered something unexpected: {body[:300]!r}")

            # -- the servers under test (CPU 0) --
            started_procs = {
                "nginx": procs.start("nginx-proxy", nginx_argv(
                    tmp, nginx_proxy_conf(tmp, "proxy", [(ports["nginx"], ports["direct"])]), "proxy"),
                    cpu=pin.server),
                "floor": procs.start("floor", floor_argv(ports["floor"]), cpu=pin.server, cwd=ROOT,
                                     env={**os.environ, "BENCH_UPSTREAM_URL": f"http://127.0.0.1:{ports['direct']}"}),
            }
            sluice = str(VENV_BIN / "sluice")
            for t in SLUICES:
                started_procs[t.key] = procs.start(
                    f"sluice-{t.key}", [sluice, "serve", "--config", str(configs[t.key]), "--port",
                                        str(ports[t.key]), "--workers", "1"], cpu=pin.server, cwd=tmp,
                    env=sluice_env)
            for key, proc in started_procs.items():
                answer = wait_ready(proc, ports[key], model=MODEL)
                if b'"chat.completion"' not in answer:
                    raise BenchError(f"{key} answered something unexpected: {answer[:300]!r}")
            log(f"every target answers 200 (request {len(chat_request(MODEL))} bytes, "
                f"answer {len(CHAT_COMPLETION)} bytes)")

            meter = CpuMeter(procs, pin.load)
            labels = {t.key: t.label for t in TARGETS}

            def measure(key: str, connections: int, seconds: float = duration) -> WrkResult:
                return run_wrk(labels[key], ports[key], connections=connections, duration=seconds, model=MODEL,
                               cpu=pin.load, meter=meter)

            # -- warm-up --
            for t in TARGETS:
                measure(t.key, THROUGHPUT_CONNS, warmup)
                measure(t.key, LATENCY_CONNS, warmup)

            # -- rounds: every target once at 64 connections, then once at 1 --
            results: dict[tuple[str, int], list[WrkResult]] = {}
            for round_ in range(repeat):
                log(f"round {round_ + 1} of {repeat}")
                for connections in (THROUGHPUT_CONNS, LATENCY_CONNS):
                    for t in TARGETS:
                        results.setdefault((t.key, connections), []).append(measure(t.key, connections))
            drift = measure("floor", THROUGHPUT_CONNS)

            for proc in procs.procs:
                if proc.popen.poll() is not None:
                    log(f"WARNING: {proc.name} exited during the run (code {proc.popen.returncode})")
            elapsed = time.monotonic() - started
        finally:
            procs.stop_all()
            kept = keep_logs(tmp, "logs")

    summary = summarise(results)
    subtitle = f"`{command}` at {dict(facts)['git']}, {dict(facts)['date']}"
    write_result("latest.json", json.dumps({"subtitle": subtitle, "summary": dataclasses.asdict(summary)}, indent=1))
    draw_chart(summary, LATEST_PNG, subtitle)
    report = render(facts, results, drift, summary, command=command, repeat=repeat, duration=duration,
                    warmup=warmup, pin=pin, elapsed=elapsed, logs=kept)
    note = None if args.ref else src_change_note(fingerprint)
    if note is not None:
        log(note)
        report += f"\n{note}\n"
    print(report)
    path = write_result("latest.md", report)
    log(f"written to {path}, {path.with_suffix('.png')} and {path.with_suffix('.json')}")
    if args.publish:
        section = readme_section(facts, summary, command=command, elapsed=elapsed, note=note,
                                 busy=contention(results, pin))
        shutil.copyfile(path.with_suffix(".png"), CHART)
        replaced = replace_section(README, section)
        print("\n" + section)
        log(f"published: {CHART.relative_to(ROOT)}" + (f" and the section of {README.relative_to(ROOT)}" if replaced
                                                       else f"; no {BEGIN} marker in {README.relative_to(ROOT)}"))
    return 0


# -- reports ---------------------------------------------------------------------------------


def redraw(*, publish: bool) -> int:
    """--redraw: the chart of the last run again, from results/latest.json."""
    try:
        saved = json.loads((BENCH / "results" / "latest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"no figures to draw again (bench/results/latest.json): {exc}") from exc
    draw_chart(Summary(**saved["summary"]), LATEST_PNG, saved["subtitle"])
    log(f"drawn again: {LATEST_PNG.relative_to(ROOT)}")
    if publish:
        shutil.copyfile(LATEST_PNG, CHART)
        log(f"published: {CHART.relative_to(ROOT)}")
    return 0


def render(facts: list[tuple[str, str]], results: dict[tuple[str, int], list[WrkResult]], drift: WrkResult,
           summary: Summary, *, command: str, repeat: int, duration: float, warmup: float, pin: Pinning,
           elapsed: float, logs: Path | None) -> str:
    out = ["# sluice benchmark: the raw floor and sluice on one core", "", f"`{command}`", ""]
    out.append(facts_table([*facts, *{
        "load average at end": loadavg(),
        "pinning": pin.note,
        "request / answer": f"{len(chat_request(MODEL))}-byte chat request (a system and a user message), "
                            f"{len(CHAT_COMPLETION)}-byte chat.completion (usage at the end)",
        "wrk runs": f"-t1, {duration:.0f} s per run, {warmup:.0f} s warm-up per server and concurrency, "
                    f"{repeat} round(s)" + (" (per-metric medians)" if repeat > 1 else ""),
        "whole run": f"{elapsed:.0f} s",
    }.items()]))
    out += ["", "## Results", "", headline_table(summary), "",
            f"req/s at {THROUGHPUT_CONNS} connections; p50/p99 in ms at {LATENCY_CONNS} connection; "
            "\"added\": the target's latency minus direct's. " + contention(results, pin), "",
            "## Against the targets (informative: a benchmark reports, it does not fail)", "",
            targets_table(summary), "", "## The targets", ""]
    out += [f"- **{t.label}**: {t.what}" for t in TARGETS]

    m = {key: median_result(runs) for key, runs in results.items()}
    rows = []
    for connections in (THROUGHPUT_CONNS, LATENCY_CONNS):
        for t in TARGETS:
            r = m[(t.key, connections)]
            each = " / ".join(f"{x.rps:,.0f}" for x in results[(t.key, connections)])
            rows.append([t.label, str(connections), f"{r.rps:,.0f}", fmt_ms(r.p50), fmt_ms(r.p90), fmt_ms(r.p99),
                         str(r.non_2xx), str(r.socket_errors), fmt_other(r.other_cpu), each])
    rows.append([f"{drift.label} (again, at the end)", str(drift.connections), f"{drift.rps:,.0f}",
                 fmt_ms(drift.p50), fmt_ms(drift.p90), fmt_ms(drift.p99), str(drift.non_2xx),
                 str(drift.socket_errors), fmt_other(drift.other_cpu), ""])
    out += ["", "## All runs (latencies in ms)", ""]
    out.append(table(["target", "conns", "req/s", "p50", "p90", "p99", "non-2xx", "socket err",
                      "others' CPU0/CPU1 %", "req/s of each round"], rows))
    out += ["", "\"others' CPU %\": how busy each CPU was with processes other than this benchmark's during the "
                "run (the highest of the rounds); the machine may be shared, so a high figure on CPU 0 means the "
                "server under test lost time to someone else.", "",
            f"Drift: the floor at the end / in the rounds: {fmt_ratio(drift.rps, summary.rps['floor'])}."]
    errors = sum(r.errors for runs in results.values() for r in runs) + drift.errors
    out.append(f"Non-2xx responses + socket errors over all measured runs: {errors}.")
    if logs is not None:
        out.append(f"Server logs of this run: {logs.relative_to(ROOT)}/")
    out.append("")
    return "\n".join(out)


def readme_section(facts: list[tuple[str, str]], summary: Summary, *, command: str, elapsed: float,
                   note: str | None, busy: str) -> str:
    """The "Latest results" section of bench/README.md, from this run only."""
    fact = dict(facts)
    lines = [
        BEGIN,
        "## Latest results",
        "",
        f"Measured by `{command}` ({elapsed:.0f} s) on {fact['date']}, at commit `{fact['git']}`: "
        "these figures are from that run and that commit only (the per-run table is in "
        "`bench/results/latest.md` of that run). One gateway worker pinned to CPU 0; nginx (the upstream) and "
        f"wrk on CPU 1. {busy}",
        "",
        headline_table(summary),
        "",
        f"req/s with `wrk -t1 -c{THROUGHPUT_CONNS}`; p50/p99 in ms with `wrk -t1 -c{LATENCY_CONNS}`; \"added\": "
        "minus direct's. Request: a 324-byte chat request; answer: a 629-byte `chat.completion`.",
        "",
        "![sluice against the raw floor](chart.png)",
        "",
        "Targets (a benchmark reports them, it never fails on them):",
        "",
        targets_table(summary),
        "",
    ]
    if note is not None:
        lines += [note, ""]
    lines += [
        "<details><summary>Machine facts</summary>",
        "",
        facts_table(facts),
        "",
        "</details>",
        END,
    ]
    return "\n".join(lines)


def replace_section(path: Path, section: str) -> bool:
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return False
    path.write_text(text[:start] + section + text[end + len(END):])
    return True


if __name__ == "__main__":
    run_main(main)
