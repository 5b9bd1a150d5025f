"""Shared plumbing of the benchmarks: processes, ports, nginx configs, wrk runs and reports.

Everything here is bounded and cleans up after itself: each process is started
in its own session (so its whole process group can be signalled), the
``Processes`` context manager stops every group it started, and a run has a
hard deadline (``Deadline``) that interrupts it wherever it is.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
RESULTS = BENCH / "results"
POST_LUA = BENCH / "post.lua"
CHAT_PATH = "/v1/chat/completions"

# What u1 (the fast nginx upstream) answers: a real-looking OpenAI chat.completion of 629 bytes (the
# issue's size), its `usage` object at the end as OpenAI sends it.
# No single quotes and no '$' in it: it sits in an nginx single-quoted string.
CHAT_COMPLETION = json.dumps({
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "The capital of France is Paris (Seine).",
                    "refusal": None, "annotations": []},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
    "usage": {
        "prompt_tokens": 52, "completion_tokens": 11, "total_tokens": 63,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    },
}, separators=(",", ":"))
assert "'" not in CHAT_COMPLETION and "$" not in CHAT_COMPLETION


def chat_request(model: str) -> bytes:
    """The chat request every benchmark sends (324 bytes with gpt-4o-mini, the issue's size): a system and a
    user message.  post.lua sends these bytes (run_wrk hands them over in BENCH_BODY)."""
    return json.dumps({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence, in plain "
                                          "text, without lists or markdown."},
            {"role": "user", "content": "What is the capital of France? Please answer briefly: name the city "
                                        "and the river it lies on."},
        ],
        "temperature": 0.2,
        "max_tokens": 128,
    }, separators=(",", ":")).encode()


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_main(main: Callable[[], int]) -> None:
    """Runs a benchmark's main: exit 1 with a message on BenchError, 130 on Ctrl-C."""
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"FAILED: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)


class BenchError(Exception):
    """The benchmark could not run (a server did not start, wrk failed...)."""


# -- time bound --------------------------------------------------------------------------


class Deadline:
    """Raises BenchError in the main thread after ``seconds``; SIGTERM ends the run the same way."""

    def __init__(self, seconds: float) -> None:
        self.seconds = max(1, int(seconds))

    def __enter__(self) -> Deadline:
        def on_alarm(signum: int, frame: FrameType | None) -> None:
            raise BenchError(f"the run exceeded its time bound of {self.seconds} s")

        def on_term(signum: int, frame: FrameType | None) -> None:
            raise BenchError(f"stopped by signal {signum}")

        self._old = (signal.signal(signal.SIGALRM, on_alarm), signal.signal(signal.SIGTERM, on_term))
        signal.alarm(self.seconds)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self._old[0])
        signal.signal(signal.SIGTERM, self._old[1])


# -- ports and CPUs ----------------------------------------------------------------------


def free_port() -> int:
    """An ephemeral port the kernel considers free right now (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Pinning:
    """Which CPU the server under test and the load side (upstreams + wrk) run on."""

    server: int | None
    load: int | None
    note: str

    @staticmethod
    def detect() -> Pinning:
        if shutil.which("taskset") is None:
            return Pinning(None, None, "taskset not found: processes are NOT pinned")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return Pinning(cpus[0], cpus[0], f"only one CPU available ({cpus[0]}): everything shares it")
        return Pinning(cpus[0], cpus[1], f"server under test on CPU {cpus[0]}, upstreams and wrk on CPU {cpus[1]}")

    @staticmethod
    def wrap(cpu: int | None, argv: Sequence[str]) -> list[str]:
        return list(argv) if cpu is None else ["taskset", "-c", str(cpu), *argv]


# -- processes ---------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    cpu: int | None = None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _proc_stats() -> Iterator[list[str]]:
    """The fields after the command name of /proc/PID/stat, for every live process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        yield stat[stat.rfind(")") + 2:].split()


def _group_alive(pgid: int) -> bool:
    """Whether any process is still in process group ``pgid``."""
    return any(len(f) > 2 and f[0] != "Z" and int(f[2]) == pgid for f in _proc_stats())


def group_rss_kib(pgid: int) -> int:
    """Total resident memory of the processes in group ``pgid`` (KiB)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[2]) != pgid:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


class Processes:
    """Starts servers, each in its own session/process group; stops all of them on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], *, cpu: int | None, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        full = Pinning.wrap(cpu, argv)
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env, cwd=cwd)
        proc = Proc(name, popen, log_path, cpu)
        self.procs.append(proc)
        log(f"started {name} (pid {popen.pid}): {' '.join(full)}")
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        pgid = proc.popen.pid
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{proc.name} did not stop on SIGTERM in {timeout:.0f} s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
        # Workers the leader left behind (same group): kill them too.
        end = time.monotonic() + 3
        while _group_alive(pgid) and time.monotonic() < end:
            time.sleep(0.1)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                log(f"stopping {proc.name} failed: {exc!r}")
        self.procs.clear()


# -- other load on the machine -----------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_busy() -> dict[int, int]:
    """Ticks each CPU spent in user, nice and system mode (irq/softirq/idle/steal left out)."""
    busy = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                busy[int(fields[0][3:])] = int(fields[1]) + int(fields[2]) + int(fields[3])
    return busy


def _group_ticks(pgids: set[int]) -> dict[int, int]:
    """CPU ticks (user + system, waited-for children included) per process group in ``pgids``."""
    ticks: dict[int, int] = dict.fromkeys(pgids, 0)
    for fields in _proc_stats():
        pgid = int(fields[2])
        if pgid in ticks:
            ticks[pgid] += sum(int(x) for x in fields[11:15])
    return ticks


def cpu_ticks(proc: Proc) -> float:
    """CPU seconds (user + system) spent so far by ``proc``'s process group (a server and its workers)."""
    return _group_ticks({proc.popen.pid})[proc.popen.pid] / _TICK


def _children_ticks() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * _TICK


class CpuMeter:
    """How much of each CPU processes other than ours used during a measurement (in % of that CPU).

    Our servers are pinned, so their ticks are charged to their CPU; wrk (a reaped child) to the
    load CPU.  What is left of each CPU's busy time is someone else's: the machine is shared.
    Tick-sampled accounting, so a few % either way is noise.
    """

    def __init__(self, procs: Processes, load_cpu: int | None) -> None:
        self.procs = procs
        self.load_cpu = load_cpu

    def start(self) -> None:
        self._pgids = {p.popen.pid: p.cpu for p in self.procs.procs}
        self._t0 = time.monotonic()
        self._busy0 = _cpu_busy()
        self._groups0 = _group_ticks(set(self._pgids))
        self._children0 = _children_ticks()

    def stop(self) -> dict[int, float]:
        busy1 = _cpu_busy()
        groups1 = _group_ticks(set(self._pgids))
        children = _children_ticks() - self._children0
        wall_ticks = (time.monotonic() - self._t0) * _TICK
        ours: dict[int, float] = {}
        for pgid, cpu in self._pgids.items():
            if cpu is not None:
                ours[cpu] = ours.get(cpu, 0) + max(0, groups1.get(pgid, 0) - self._groups0.get(pgid, 0))
        if self.load_cpu is not None:
            ours[self.load_cpu] = ours.get(self.load_cpu, 0) + children
        other = {}
        for cpu, ticks in busy1.items():
            used = ticks - self._busy0.get(cpu, ticks) - ours.get(cpu, 0)
            other[cpu] = max(0.0, 100.0 * used / wall_ticks) if wall_ticks > 0 else 0.0
        return other


# -- readiness ---------------------------------------------------------------------------


def start_redis(procs: Processes, tmp: Path) -> str:
    """A throwaway redis-server on CPU 1 (no persistence), answering; its URL."""
    port = free_port()
    procs.start("redis", ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                cpu=1)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"redis-server not answering on port {port}")


# The key every benchmark request presents (post.lua too): a static key of the auth variants.
BENCH_API_KEY = "sk-bench-0123456789abcdef"


def wait_ready(proc: Proc, port: int, *, model: str, timeout: float = 30.0) -> bytes:
    """Polls the port until it accepts, then until a chat POST answers 200; returns that body."""
    end = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < end:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError as exc:
            last = exc
            time.sleep(0.1)
            continue
        try:
            status, body = post_chat(port, model)
        except (OSError, http.client.HTTPException) as exc:
            last = exc
            time.sleep(0.2)
            continue
        if status == 200:
            return body
        last = f"HTTP {status}: {body[:300]!r}"
        time.sleep(0.2)
    raise BenchError(f"{proc.name} not ready on port {port} after {timeout:.0f} s ({last}):\n{proc.tail()}")


def post_chat(port: int, model: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", CHAT_PATH, body=chat_request(model), headers={"content-type": "application/json",
                                                            "authorization": f"Bearer {BENCH_API_KEY}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- nginx -------------------------------------------------------------------------------


def _nginx_temp_paths(tmp: Path, name: str) -> str:
    """*_temp_path directives into ``tmp`` for every module this nginx has."""
    configure = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10).stderr
    lines = [f"client_body_temp_path {tmp}/{name}-client_body;", f"proxy_temp_path {tmp}/{name}-proxy;"]
    for module in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in configure:
            lines.append(f"{module}_temp_path {tmp}/{name}-{module};")
    return "\n    ".join(lines)


def _nginx_conf(tmp: Path, name: str, http_body: str) -> Path:
    conf = f"""worker_processes 1;
daemon off;
master_process on;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    {_nginx_temp_paths(tmp, name)}
    keepalive_timeout 75s;
    keepalive_requests 10000000;
{http_body}
}}
"""
    path = tmp / f"{name}.conf"
    path.write_text(conf)
    return path


def nginx_static_conf(tmp: Path, name: str, port: int) -> Path:
    """u1: nginx answering every chat POST with a fixed chat.completion (``return 200``), and
    OTLP/HTTP trace exports with an empty (valid) ExportTraceServiceResponse."""
    return _nginx_conf(tmp, name, f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location {CHAT_PATH} {{
            default_type application/json;
            return 200 '{CHAT_COMPLETION}';
        }}
        location = /v1/traces {{
            default_type application/x-protobuf;
            return 200 '';
        }}
        location / {{
            return 404;
        }}
    }}""")


def nginx_proxy_conf(tmp: Path, name: str, routes: Sequence[tuple[int, int]]) -> Path:
    """r: nginx as a keep-alive reverse proxy, the C reference for the gateway.

    ``routes`` pairs a listening port with the upstream port it proxies to.
    """
    blocks = []
    for i, (port, upstream_port) in enumerate(routes):
        blocks.append(f"""    upstream up{i} {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://up{i};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""")
    return _nginx_conf(tmp, name, "\n".join(blocks))


def nginx_argv(tmp: Path, conf: Path, name: str) -> list[str]:
    return ["nginx", "-p", str(tmp), "-e", str(tmp / f"{name}-error.log"), "-c", str(conf)]


# -- wrk ---------------------------------------------------------------------------------


def ensure_tools() -> None:
    """wrk and nginx (the fast upstream) must be on PATH; installed with apt-get when running as root."""
    for tool, package in (("wrk", "wrk"), ("nginx", "nginx")):
        _ensure_tool(tool, package)


def _ensure_tool(tool: str, package: str) -> None:
    if shutil.which(tool):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"bench: {tool} is not installed. Install it (e.g. `sudo apt-get install -y {package}`) and "
                 "run again.")
    log(f"{tool} is missing: apt-get install -y {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", package], env=env, timeout=300)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, timeout=300)
        subprocess.run(["apt-get", "install", "-y", package], env=env, timeout=300)
    if not shutil.which(tool):
        sys.exit(f"bench: installing {package} with apt-get failed; install it and run again.")


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)


@dataclass
class WrkResult:
    label: str
    connections: int
    rps: float
    p50: float  # milliseconds
    p90: float
    p99: float
    requests: int
    non_2xx: int
    socket_errors: int
    other_cpu: dict[int, float] = field(default_factory=dict)  # % of each CPU used by others meanwhile
    output: str = field(repr=False, default="")

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def parse_wrk(label: str, connections: int, output: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if rps is None:
        raise BenchError(f"cannot read Requests/sec from wrk output for {label}:\n{output}")
    percentiles = {p: float(v) * _UNITS_MS[u] for p, v, u in _PERCENTILE.findall(output)}
    if not {"50", "90", "99"} <= percentiles.keys():
        raise BenchError(f"no Latency Distribution in wrk output for {label}:\n{output}")
    requests = re.search(r"^\s*(\d+) requests in", output, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        label=label, connections=connections, rps=float(rps.group(1)),
        p50=percentiles["50"], p90=percentiles["90"], p99=percentiles["99"],
        requests=int(requests.group(1)) if requests else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sockets.groups()) if sockets else 0,
        output=output,
    )


def run_wrk(label: str, port: int, *, connections: int, duration: float, model: str, cpu: int | None,
            path: str = CHAT_PATH, meter: CpuMeter | None = None) -> WrkResult:
    """One wrk run (-t1, --latency, post.lua), bounded by duration + 30 s."""
    seconds = max(1, round(duration))
    argv = Pinning.wrap(cpu, ["wrk", "--latency", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
                              "-s", str(POST_LUA), f"http://127.0.0.1:{port}{path}"])
    env = {**os.environ, "BENCH_MODEL": model, "BENCH_BODY": chat_request(model).decode()}
    if meter is not None:
        meter.start()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 30,
                          start_new_session=True)
    other = meter.stop() if meter is not None else {}
    if done.returncode != 0:
        raise BenchError(f"wrk failed for {label} (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = parse_wrk(label, connections, done.stdout)
    result.other_cpu = other
    note = f" NON-2XX {result.non_2xx}" if result.non_2xx else ""
    note += f" SOCKET ERRORS {result.socket_errors}" if result.socket_errors else ""
    if other:
        note += "  (others: " + ", ".join(f"CPU{c} {v:.0f}%" for c, v in sorted(other.items())) + ")"
    log(f"{label:<38} c={connections:<3} {result.rps:>9.0f} rps  p50 {result.p50:.3f}  p90 {result.p90:.3f}  "
        f"p99 {result.p99:.3f} ms{note}")
    return result


# -- report ------------------------------------------------------------------------------


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def git_state() -> str:
    """The commit measured, and whether src/ differs from it (others may be editing)."""
    head = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    try:
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return head
    return f"{head} (src/ has uncommitted changes)" if dirty else f"{head} (src/ clean)"


def src_fingerprint() -> str:
    """A hash of the package's files: tells whether src/ changed while a run was going on."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "src").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode())
            with contextlib.suppress(OSError):
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def src_change_note(before: str) -> str | None:
    """A warning for the report when src/ is not what it was when the servers started."""
    if src_fingerprint() == before:
        return None
    return ("WARNING: src/ changed while this run was going on (someone edited or committed); the servers "
            f"ran the code as it was at the start, which `git` above names (now {git_state()}).")


def install_commit(rev: str) -> tuple[Path, str]:
    """sluice as committed at ``rev``, built (Cython extensions included) into bench/results/builds/<key>/ once
    and reused; its directory (for PYTHONPATH, ahead of the editable install) and the full commit hash.  The key
    hashes the commit's trees of what the build reads (src/, ext/, setup.py, pyproject.toml), so commits that
    change only other files (bench/, docs/) share one build.

    What lets a benchmark measure a commit while the working tree holds someone's unfinished edits: the files
    come from ``git archive``, never from the working tree."""
    import tarfile
    import tempfile

    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                          capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise BenchError(f"not a commit: {rev!r}: {done.stderr.strip()}")
    sha = done.stdout.strip()
    trees = subprocess.run(["git", "-C", str(ROOT), "rev-parse",
                            *(f"{sha}:{part}" for part in ("src", "ext", "setup.py", "pyproject.toml"))],
                           capture_output=True, text=True, timeout=10)
    if trees.returncode != 0:
        raise BenchError(f"cannot read the build's trees at {sha[:12]}: {trees.stderr.strip()}")
    import hashlib

    target = RESULTS / "builds" / hashlib.sha256(trees.stdout.encode()).hexdigest()[:12]
    if (target / ".complete").exists():
        log(f"sluice at {sha[:12]}: already built in {target.relative_to(ROOT)} (same src/, ext/, setup.py, "
            "pyproject.toml)")
        return target, sha
    shutil.rmtree(target, ignore_errors=True)
    log(f"building sluice at {sha[:12]} into {target.relative_to(ROOT)} (git archive + pip install --no-deps)")
    with tempfile.TemporaryDirectory(prefix="sluice-src-") as src:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", sha], capture_output=True,
                                 timeout=120, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(src, filter="data")
        env = {**os.environ, "SLUICE_REQUIRE_EXTENSIONS": "1"}
        build = subprocess.run([str(VENV_BIN / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                                "--target", str(target), src], capture_output=True, text=True, timeout=900, env=env)
    if build.returncode != 0:
        raise BenchError(f"building sluice at {sha[:12]} failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    (target / ".complete").write_text(sha + "\n")
    return target, sha


def machine_facts(extra: dict[str, str] | None = None) -> list[tuple[str, str]]:
    try:
        from sluice import __version__ as sluice_version
        from sluice._native import IMPLEMENTATION
        sluice = f"{sluice_version} (hot path: {IMPLEMENTATION})"
    except Exception as exc:  # the report still has the other facts
        sluice = f"unavailable ({exc})"
    facts = [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("nproc", f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})"),
        ("CPU", cpu_model()),
        ("kernel", platform.release()),
        ("python", platform.python_version()),
        ("granian", package_version("granian")),
        ("uvloop", package_version("uvloop")),
        ("sluice", sluice),
        ("wrk", _first_line(["wrk", "-v"])),
        ("nginx", _first_line(["nginx", "-v"]) if shutil.which("nginx") else "not installed"),
        ("git", git_state()),
        ("load average at start", loadavg()),
    ]
    facts.extend((extra or {}).items())
    return facts


def facts_table(facts: list[tuple[str, str]]) -> str:
    rows = ["| fact | value |", "|---|---|"]
    rows += [f"| {key} | {value} |" for key, value in facts]
    return "\n".join(rows)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, text_columns: int = 1) -> str:
    """A markdown table: the first ``text_columns`` columns left-aligned, the figures right-aligned."""
    align = "|".join("---" if i < text_columns else "---:" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", f"|{align}|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.2f}"


def fmt_delta(value: float) -> str:
    return f"{value:+.3f}"


def fmt_other(other: dict[int, float]) -> str:
    return " / ".join(f"{other[c]:.0f}" for c in sorted(other)) if other else "n/a"


def fmt_ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}" if den else "n/a"


def write_result(name: str, markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(markdown)
    return path


def keep_logs(log_dir: Path, name: str) -> Path | None:
    """Copies the server logs of this run to bench/results/<name>/ (git-ignored)."""
    target = RESULTS / name
    with contextlib.suppress(OSError):
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(log_dir, target, ignore=shutil.ignore_patterns("*.pid", "*-client_body", "*-proxy",
                                                                       "*-fastcgi", "*-uwsgi", "*-scgi"))
        return target
    return None


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
