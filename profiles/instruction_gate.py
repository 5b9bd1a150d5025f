"""The performance gate: instructions per request of the gateway worker's event-loop thread, three configs,
against a baseline committed in the repo (tests/perf/instructions_baseline.json).

    .venv/bin/python profiles/instruction_gate.py                      # measure, compare, exit 1 on a fail
    .venv/bin/python profiles/instruction_gate.py --record --why "..." # measure and write the baseline
    .venv/bin/python profiles/instruction_gate.py --configs bare --repeat 3   # the spread of repeated runs
    .venv/bin/python profiles/instruction_gate.py --configs bare default --interface asgi  # the other interface

``tests/perf/test_instruction_gate.py`` runs the same measurement and comparison in ``make test``.  Each
config is measured by ``callgrind_worker.measure`` (one Granian worker under callgrind, the benchmark's
request and answer, PYTHONHASHSEED=0, timers stretched by valgrind's slowdown): WARMUP requests, then
REQUESTS requests counted, at one connection.  Instruction counts do not depend on the machine's speed or
load, so the gate means the same on a laptop, a shared host and CI; they do depend on the Python build
and on Granian's and uvloop's versions, which the baseline records (``stack``) and a failure names.
The gate measures ``sluice serve --interface rsgi`` whatever the CLI's default; ``--interface asgi``
measures the ASGI face the same way (to compare the two, never to record: the baseline is RSGI's).

A figure more than TOLERANCE (5 %) over its baseline fails; one under LOWER_NOTE (90 %) of it passes
with a note that the baseline may be lowered.  The baseline changes only in a commit that says why (the
file's ``why``), recorded by ``--record`` from the tree as it is (the file names the commit and whether
src/ had uncommitted changes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import callgrind_worker as cw

ROOT = cw.ROOT
BASELINE = ROOT / "tests" / "perf" / "instructions_baseline.json"
WARMUP = 300
REQUESTS = 1000
CONNECTIONS = 1
SLOWDOWN = 40.0
TOLERANCE = 0.05  # more than this growth over the baseline fails
LOWER_NOTE = 0.90  # under this share of the baseline: a note that the baseline may be lowered

# The three configs (``{upstream}``: the upstream's URL).  The client always sends the benchmark's
# ``Authorization: Bearer`` key (bench/post.lua), which "full" accepts as a static key.
CONFIGS: dict[str, str] = {
    # Nothing but the proxying: no metrics, no access log.
    "bare": "observability: {metrics: false, access_log: false}",
    # The quickstart's defaults: metrics and the access log on (the log to /dev/null, as bench/run.py does).
    "default": "observability: {access_log_path: /dev/null}",
    # bench/run.py's "full": authentication by a static API key (docs/auth.md), one local rate limit that never
    # refuses (docs/ratelimits.md), metrics, access log and tracing on with nothing sampled (docs/observability.md);
    # the SQLite store in the gateway's directory.
    # Its own timers stretched like the sitecustomize's: the revocation poll (0.5 s on the event loop) and
    # the span exporter's flush (1 s, its own thread).
    "full": f"""\
auth:
  enabled: true
  static_keys: [{{name: bench, key: {cw.API_KEY}, roles: [user]}}]
  revocation_poll_s: {min(60.0, 0.5 * SLOWDOWN):g}
ratelimit:
  policies: [{{name: bench-per-key, scope: key, rate: 1000000000, period_s: 1, mode: local}}]
observability:
  access_log_path: /dev/null
  tracing: {{enabled: true, sample_ratio: 0, endpoint: "{{upstream}}/v1/traces", flush_interval_s: {SLOWDOWN:g}}}
""",
}


# -- the stack the figures belong to -------------------------------------------------------


def stack(pythonpath: str | None = None) -> dict[str, str]:
    """What instruction counts depend on besides sluice: the Python build, Granian, uvloop, valgrind, whether
    sluice's compiled extensions or their pure twins serve (asked of the sluice that will run), and the sizes
    of the request and of the upstream's answer."""
    env = {**os.environ, "PYTHONPATH": pythonpath or ""}
    probe = ("import json, platform, granian, uvloop; from sluice._native import IMPLEMENTATION as i; "
             "print(json.dumps({'python': platform.python_version(), 'granian': granian.__version__, "
             "'uvloop': uvloop.__version__, 'sluice_native': i}))")
    done = subprocess.run([str(ROOT / ".venv/bin/python"), "-c", probe], capture_output=True, text=True, env=env,
                          timeout=120)
    if done.returncode != 0:
        raise cw.MeasureError(f"cannot import sluice: {done.stderr.strip()[-2000:]}")
    found: dict[str, str] = json.loads(done.stdout)
    version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    found["valgrind"] = version.removeprefix("valgrind-")
    # The request and the answer (bench/_harness.py's): other bytes, other counts.
    found["request_body_bytes"] = str(len(cw.REQUEST_BODY))
    found["answer_bytes"] = str(len(cw.ANSWER))
    return found


# -- the comparison ----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    config: str
    figure: float
    baseline: float
    status: str  # "ok", "fail" (over TOLERANCE) or "lower" (under LOWER_NOTE: the baseline may be lowered)
    message: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def compare(config: str, figure: float, baseline: float, *, stack_note: str = "") -> Verdict:
    """A figure against its baseline: fails past ``baseline * (1 + TOLERANCE)``."""
    ratio = figure / baseline
    head = (f"{config}: {figure:,.0f} instructions per request against the baseline's {baseline:,.0f} "
            f"({ratio - 1:+.1%})")
    if ratio > 1 + TOLERANCE:
        return Verdict(config, figure, baseline, "fail",
                       f"{head}: more than {TOLERANCE:.0%} over the baseline. Find what the request path gained "
                       "(profiles/server_instructions.py, callgrind_annotate) or, if the cost is wanted, re-record the "
                       f"baseline in a commit that says why (profiles/README.md).{stack_note}")
    if ratio < LOWER_NOTE:
        return Verdict(config, figure, baseline, "lower",
                       f"{head}: under {LOWER_NOTE:.0%} of the baseline; the baseline may be lowered "
                       "(profiles/instruction_gate.py --record --why ...) in a commit that says why.")
    return Verdict(config, figure, baseline, "ok", head)


def stack_note(recorded: Mapping[str, str], now: Mapping[str, str]) -> str:
    """Names what differs between the baseline's stack and this run's (figures then move by themselves)."""
    changed = [f"{key} {recorded.get(key)} -> {now.get(key)}" for key in sorted(set(recorded) | set(now))
               if recorded.get(key) != now.get(key)]
    return f" The stack differs from the baseline's ({', '.join(changed)})." if changed else ""


# -- the baseline file -------------------------------------------------------------------


def load_baseline(path: Path = BASELINE) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data


def baseline_figures(data: Mapping[str, object]) -> dict[str, float]:
    figures = data["loop_instructions_per_request"]
    assert isinstance(figures, dict)
    return {name: float(value) for name, value in figures.items()}


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


def write_baseline(figures: Mapping[str, float], why: str, found_stack: Mapping[str, str], *,
                   commit: str | None = None, spread: Mapping[str, list[float]] | None = None,
                   path: Path = BASELINE) -> None:
    """``commit``: the commit a pristine copy measured (--pythonpath) was made of; None: this tree, its HEAD
    and whether src/ or ext/ differ from it."""
    dirty = False
    if commit is None:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--", "src", "ext"))
    data = {
        "about": ("Instructions per request of the gateway worker's event-loop thread (callgrind), compared by "
                  "tests/perf/test_instruction_gate.py: more than 5 % over a figure fails. Re-record with "
                  "`.venv/bin/python profiles/instruction_gate.py --record --why '...'` (this tree; or a pristine copy "
                  "of a commit with --pythonpath DIR --commit SHA) and commit this file alone, saying why "
                  "(profiles/README.md)."),
        "why": why,
        "commit": commit,
        "src_uncommitted_changes": dirty,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "warmup": WARMUP,
        "requests": REQUESTS,
        "connections": CONNECTIONS,
        "slowdown": SLOWDOWN,
        "stack": dict(found_stack),
        "loop_instructions_per_request": {name: round(value) for name, value in figures.items()},
    }
    if spread:
        data["runs"] = {name: [round(v) for v in values] for name, values in spread.items()}
    path.write_text(json.dumps(data, indent=2) + "\n")


# -- measuring ---------------------------------------------------------------------------


def measure_configs(tmp: Path, names: Iterable[str], *, repeat: int = 1, pythonpath: str | None = None,
                    extra_site: str = "", env: Mapping[str, str] | None = None, requests: int = REQUESTS,
                    warmup: int = WARMUP, interface: str = "rsgi") -> dict[str, list[cw.Measurement]]:
    """Each named config measured ``repeat`` times (interleaved), at the gate's settings."""
    results: dict[str, list[cw.Measurement]] = {}
    with cw.session(tmp) as (procs, upstream):
        for round_ in range(repeat):
            for name in names:
                results.setdefault(name, []).append(cw.measure(
                    procs, tmp, f"{name}-{round_}", CONFIGS[name], upstream, requests=requests, warmup=warmup,
                    connections=CONNECTIONS, slowdown=SLOWDOWN, pythonpath=pythonpath, extra_site=extra_site,
                    env=env, interface=interface))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--repeat", type=int, default=1, help="measurements per config (the median is compared)")
    parser.add_argument("--pythonpath", help="measure the sluice in this directory (another version's src/)")
    parser.add_argument("--record", action="store_true", help=f"write the figures to {BASELINE.relative_to(ROOT)}")
    parser.add_argument("--why", help="with --record: why the baseline changes (kept in the file)")
    parser.add_argument("--commit", help="with --record --pythonpath: the commit that copy of sluice was made of")
    parser.add_argument("--interface", choices=("rsgi", "asgi"), default="rsgi",
                        help="the Granian interface measured (the baseline is rsgi's)")
    args = parser.parse_args()
    if args.record and not args.why:
        parser.error("--record needs --why: the baseline changes only for a reason")
    if args.record and set(args.configs) != set(CONFIGS):
        parser.error("--record measures every config (the baseline names one commit for all)")
    if args.record and args.interface != "rsgi":
        parser.error("--record measures the rsgi interface (the baseline is RSGI's)")
    if args.record and bool(args.pythonpath) != bool(args.commit):
        parser.error("--record: --pythonpath and --commit go together (the baseline names what was measured)")
    if missing := cw.tools_missing():
        print(f"{', '.join(missing)} needed (apt-get install valgrind)", file=sys.stderr)
        return 1
    found_stack = stack(args.pythonpath)
    with cw.h.temp_dir("sluice-gate-") as tmp:
        results = measure_configs(tmp, args.configs, repeat=args.repeat, pythonpath=args.pythonpath,
                                  interface=args.interface)
    figures = {name: statistics.median(m.loop for m in runs) for name, runs in results.items()}
    print(f"\ninstructions per request, event-loop thread ({REQUESTS} requests after {WARMUP}, {CONNECTIONS} "
          f"connection, --interface {args.interface}; {found_stack})")
    for name, runs in results.items():
        loops = [m.loop for m in runs]
        spread = (f"  runs {', '.join(f'{v:,.0f}' for v in loops)} "
                  f"(spread {(max(loops) - min(loops)) / min(loops):.3%})" if len(runs) > 1 else "")
        print(f"  {name:<8} {figures[name]:>10,.0f}   all threads {statistics.median(m.total for m in runs):>10,.0f}   "
              f"{max(m.seconds for m in runs):.0f} s ({max(m.start_seconds for m in runs):.0f} s to start), "
              f"upstream request {runs[0].upstream_request_bytes} B{spread}")
    if args.record:
        write_baseline(figures, args.why, found_stack, commit=args.commit,
                       spread={name: [m.loop for m in runs] for name, runs in results.items()} if args.repeat > 1
                       else None)
        print(f"written: {BASELINE.relative_to(ROOT)} (commit it alone, saying why)")
        return 0
    if not BASELINE.exists():
        print(f"no baseline yet ({BASELINE.relative_to(ROOT)}): record one with --record --why ...")
        return 1
    baseline = load_baseline()
    base_figures = baseline_figures(baseline)
    note = stack_note(baseline.get("stack", {}), found_stack)  # type: ignore[arg-type]
    failed = False
    for name, figure in figures.items():
        verdict = compare(name, figure, base_figures[name], stack_note=note)
        failed |= verdict.failed
        print(f"{verdict.status.upper():>5}  {verdict.message}")
    return 1 if failed else 0


if __name__ == "__main__":
    cw.h.run_main(main)
