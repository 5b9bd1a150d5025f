"""Soak and chaos: a mixed load for minutes; do the worker's RSS, fds and in-flight come back to baseline?

    .venv/bin/python bench/soak.py [--minutes 10] [--quick] [--rss-tolerance 0.10]

One `sluice serve --workers 1` (the default interface) in front of two `sluice mock-upstream`s: "small"
(token streams, ``--chunk-ms 20``) and "large" (``--interface asgi --stream-bytes 4000000``: 4 MB streams).
The gateway's models (written here): ``gpt-4o-mini`` on small, ``big`` on large, and three fault models on
small under their own provider (so their failures never open the breaker of the others): ``mock-status-503``
(an error answer), ``mock-fault-close-mid-stream`` (a stream cut mid-body), ``mock-fault-reset`` (a connection
reset without an answer).  The mix, drawn per arrival (open loop, arrivals evenly spaced):

    plain     55 %  a chat, read whole (expects 200)
    stream    20 %  a streamed chat, read to its end (200 and [DONE])
    error     10 %  one of the three fault models (expects the gateway's error: a 5xx, or a stream's error event)
    cancel    10 %  a streamed chat, closed after its first event (the gateway accounts client_disconnected)
    slow       3 %  a 4 MB stream read at ~256 KB/s through a 64 KiB receive buffer (paced by the gateway)
    stalled    2 %  a 4 MB stream whose reader stops after the first event and closes 14 s later (the
                    gateway cuts it after backlog.STALL_S: client_stalled)

Slow and stalled readers are capped at 8 at a time each, and all requests at 64 (an arrival past a cap is
counted "skipped").  The
rate: half of capacity, capacity being the plain chats/s that this client and the gateway manage together with
32 callers for 5 s at the start (the client is Python on the same shared machine: it, not the gateway, may be
what limits).  Every connection is new (``connection: close``), so fds churn.

Phases: calibrate; warm up (the mix, 30 s, or 10 s with --quick); settle until in-flight is 0, then the baseline
sample; the load (``--minutes``); then a settle (until in-flight is 0 and the stalled readers are closed, at most
60 s, then 10 s more); the end sample.  Sampled every ``--every`` seconds throughout: the worker's RSS and open
fds (/proc) and ``sluice_requests_in_flight`` (/metrics).  PASS only if, at the end, RSS <= baseline x (1 +
``--rss-tolerance``), fds <= baseline + ``--fd-slack`` (idle upstream connections come and go) and in-flight is
0.  Writes bench/results/soak.md (git-ignored) and soak.png (if matplotlib is installed); exits 0 when it
measured, PASS or FAIL (a benchmark, not a test), 1 when it could not run.  127.0.0.1 only; bounded by a
deadline of the phases' sum plus 3 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import errno
import itertools
import json
import os
import random
import resource
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from tests.conftest import Proc, free_port, start_mock  # noqa: E402  (the suite's process helpers)

from _harness import BenchError, Deadline, facts_table, log, machine_facts, run_main, table, temp_dir, write_result  # noqa: E402
from slow_readers import log_counts, rss_kib, worker_of  # noqa: E402

KINDS = (("plain", 55), ("stream", 20), ("error", 10), ("cancel", 10), ("slow", 3), ("stalled", 2))
FAULT_MODELS = ("mock-status-503", "mock-fault-close-mid-stream", "mock-fault-reset")
BIG_CAP = 8  # slow and stalled readers at a time, each
RUNNING_CAP = 64  # requests of the client at a time: past it an arrival is skipped, not queued (an open loop
# without a cap snowballs once the shared machine slows the gateway: the first 10-minute run did)
STALLED_HOLD_S = 14.0  # a stalled reader closes this long after its first event (the gateway cuts at 10 s)
SLOW_READ = 16 * 1024  # a slow reader's read, every SLOW_EVERY_S (~256 KB/s)
SLOW_EVERY_S = 0.0625
RCVBUF = 64 * 1024
TIMEOUT_S = 60.0

CONFIG = """\
server: {{host: 127.0.0.1, port: {port}}}
providers:
  small: {{kind: openai, base_url: "{small}", api_keys: [sk-mock]}}
  large: {{kind: openai, base_url: "{large}", api_keys: [sk-mock]}}
  faulty: {{kind: openai, base_url: "{small}", api_keys: [sk-mock]}}
models:
  gpt-4o-mini: {{targets: [{{provider: small, model: gpt-4o-mini}}]}}
  big: {{targets: [{{provider: large, model: gpt-4o-mini}}]}}
{faults}
observability: {{access_log_path: "{access_log}"}}
"""


def request_bytes(model: str, stream: bool) -> bytes:
    body = json.dumps({"model": model, "stream": stream,
                       "messages": [{"role": "user", "content": "What is the capital of France?"}]}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


@dataclass
class Tally:
    """Requests by kind and outcome ("ok", or what went wrong), and the ones in progress."""

    outcomes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    running: collections.Counter[str] = field(default_factory=collections.Counter)

    def by_kind(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for (kind, outcome), count in sorted(self.outcomes.items()):
            found.setdefault(kind, {})[outcome] = count
        return found


async def _connect(port: int, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the advertised window
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    limit = rcvbuf or 1 << 16  # the StreamReader's own buffer: not read, it stops reading the socket too
    return await asyncio.open_connection(sock=sock, limit=limit)


def _status(head: bytes) -> int:
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


async def _exchange(port: int, kind: str, rng: random.Random) -> str:
    """One request of ``kind``; its outcome."""
    stream = kind != "plain"
    model = {"slow": "big", "stalled": "big"}.get(kind, "gpt-4o-mini")
    if kind == "error":
        model = rng.choice(FAULT_MODELS)
    reader, writer = await _connect(port, RCVBUF if kind in ("slow", "stalled") else None)
    try:
        writer.write(request_bytes(model, stream))
        if kind in ("plain", "stream", "error"):
            data = await reader.read(-1)  # connection: close, so to EOF
            status = _status(data)
            if kind == "error":
                if status >= 500 or (status == 200 and b'"error"' in data):
                    return "ok"
                return f"unexpected {status}"
            if status != 200:
                return f"status {status}"
            return "ok" if kind == "plain" or b"[DONE]" in data else "no [DONE]"
        seen = b""
        while b"data:" not in seen:
            piece = await reader.read(4096)
            if not piece:
                return f"closed before the first event ({_status(seen)})"
            seen += piece
        if _status(seen) != 200:
            return f"status {_status(seen)}"
        if kind == "cancel":
            return "ok"
        if kind == "stalled":
            await asyncio.sleep(STALLED_HOLD_S)
            return "ok"
        while True:  # slow
            piece = await reader.read(SLOW_READ)
            if not piece:
                return "ok"  # the gateway paced it to the end (or cut it: the access log says which)
            await asyncio.sleep(SLOW_EVERY_S)
    finally:
        writer.transport.abort()  # a reset, not a lingering close: callers that leave abruptly


async def _one(port: int, kind: str, tally: Tally, rng: random.Random) -> None:
    tally.running[kind] += 1
    try:
        async with asyncio.timeout(TIMEOUT_S):
            outcome = await _exchange(port, kind, rng)
    except TimeoutError:
        outcome = "timeout"
    except OSError as exc:
        outcome = f"{type(exc).__name__} {errno.errorcode.get(exc.errno or 0, exc.errno)}"
    finally:
        tally.running[kind] -= 1
    tally.outcomes[kind, outcome] += 1


async def load(port: int, rate: float, seconds: float, tally: Tally, rng: random.Random) -> None:
    """Arrivals of the mix at ``rate`` a second for ``seconds``, evenly spaced; waits for none of them."""
    names = [name for name, _ in KINDS]
    weights = [weight for _, weight in KINDS]
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    n = 0
    while True:
        due = start + n / rate
        now = time.monotonic()
        if now - start >= seconds:
            break
        if due > now:
            await asyncio.sleep(due - now)
        n += 1
        kind = rng.choices(names, weights)[0]
        if kind in ("slow", "stalled") and tally.running[kind] >= BIG_CAP:
            tally.outcomes[kind, "skipped"] += 1
            continue
        if tasks and len(tasks) >= RUNNING_CAP:
            tally.outcomes[kind, f"skipped ({RUNNING_CAP} running)"] += 1
            continue
        task = asyncio.create_task(_one(port, kind, tally, rng))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def calibrate(port: int, seconds: float = 5.0, callers: int = 32) -> float:
    tally = Tally()
    rng = random.Random(0)
    end = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < end:
            await _one(port, "plain", tally, rng)

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(callers)))
    ok = tally.outcomes["plain", "ok"]
    if ok == 0:
        raise BenchError(f"calibration: no plain chat succeeded: {dict(tally.outcomes)}")
    return ok / (time.monotonic() - started)


@dataclass
class Sample:
    t: float
    phase: str
    rss_kib: int
    fds: int
    in_flight: float


async def in_flight(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n")
        async with asyncio.timeout(10):
            text = (await reader.read(-1)).decode(errors="replace")
    finally:
        writer.close()
    for line in text.splitlines():
        if line.startswith("sluice_requests_in_flight"):
            return float(line.split()[-1])
    raise BenchError("no sluice_requests_in_flight in /metrics")


class Sampler:
    def __init__(self, port: int, worker: int, every: float) -> None:
        self.port, self.worker, self.every = port, worker, every
        self.samples: list[Sample] = []
        self.phase = "calibrate"
        self.started = time.monotonic()

    async def take(self) -> Sample:
        flight = await in_flight(self.port)
        sample = Sample(round(time.monotonic() - self.started, 1), self.phase, rss_kib(self.worker),
                        len(os.listdir(f"/proc/{self.worker}/fd")), flight)
        self.samples.append(sample)
        return sample

    async def run(self) -> None:
        while True:
            await self.take()
            await asyncio.sleep(self.every)


async def settle(sampler: Sampler, tally: Tally, limit_s: float, then_s: float) -> None:
    """Until the gateway has nothing in flight and the client nothing running (at most ``limit_s``), then
    ``then_s`` more."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if (await sampler.take()).in_flight == 0 and not +tally.running:
            break
        await asyncio.sleep(1)
    await asyncio.sleep(then_s)


def chart(samples: list[Sample], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [s.t for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True)
    for ax, values, label in zip(axes, ([s.rss_kib / 1024 for s in samples], [s.fds for s in samples],
                                        [s.in_flight for s in samples]),
                                 ("worker RSS (MiB)", "worker open fds", "in flight"), strict=True):
        ax.plot(t, values, linewidth=1)
        ax.set_ylabel(label, fontsize=8)
        for s0, s1 in itertools.pairwise(samples):
            if s1.phase != s0.phase:
                ax.axvline(s1.t, color="grey", linewidth=0.5, linestyle=":")
    axes[-1].set_xlabel("seconds")
    fig.suptitle("sluice soak: one worker under the mixed load", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


async def soak(args: argparse.Namespace, work: Path) -> str:
    access_log = work / "access.log"
    facts = machine_facts({"shared": "2 cores shared with other engineers' work during the run"})  # at the start
    small = start_mock(work, "--chunk-ms", "20")
    large = start_mock(work, "--interface", "asgi", "--stream-bytes", "4000000")
    port = free_port()
    faults = "\n".join(f"  {m}: {{targets: [{{provider: faulty, model: {m}}}]}}" for m in FAULT_MODELS)
    config = work / "gateway.yaml"
    config.write_text(CONFIG.format(port=port, small=small.url, large=large.url, faults=faults,
                                    access_log=access_log))
    gateway = Proc(["serve", "--config", str(config), "--workers", "1"], port, work / "gateway.log")
    try:
        worker = worker_of(gateway)
        sampler = Sampler(port, worker, args.every)
        sampling = asyncio.create_task(sampler.run())
        rng = random.Random(args.seed)
        capacity = await calibrate(port)
        rate = capacity * args.load
        log(f"capacity {capacity:.0f} plain chats/s; the mix at {rate:.0f} arrivals/s")
        tally = Tally()
        sampler.phase = "warm-up"
        await load(port, rate, args.warmup_s, tally, rng)
        sampler.phase = "settle"
        await settle(sampler, tally, 60, 3)
        base = await sampler.take()
        log(f"baseline: RSS {base.rss_kib / 1024:.1f} MiB, {base.fds} fds, {base.in_flight:g} in flight")
        tally = Tally()
        sampler.phase = "load"
        started = time.monotonic()
        await load(port, rate, args.minutes * 60, tally, rng)
        loaded_s = time.monotonic() - started
        sampler.phase = "settle "
        await settle(sampler, tally, 60, args.settle_s)
        end = await sampler.take()
        sampling.cancel()
        log(f"end: RSS {end.rss_kib / 1024:.1f} MiB, {end.fds} fds, {end.in_flight:g} in flight")
        loaded = [s for s in sampler.samples if s.phase == "load"] or [end]
        access = dict(sorted(log_counts(access_log).items()))
        return report(args, base, end, loaded, tally, access, capacity, rate, loaded_s, sampler.samples, facts)
    finally:
        gateway.stop()
        small.stop()
        large.stop()


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def report(args: argparse.Namespace, base: Sample, end: Sample, loaded: list[Sample], tally: Tally,
           access: dict[str, int], capacity: float, rate: float, loaded_s: float, samples: list[Sample],
           facts: list[tuple[str, str]]) -> str:
    rss_ok = end.rss_kib <= base.rss_kib * (1 + args.rss_tolerance)
    fds_ok = end.fds <= base.fds + args.fd_slack
    flight_ok = end.in_flight == 0
    verdict = "PASS" if rss_ok and fds_ok and flight_ok else "FAIL"
    rows = [
        ("worker RSS (MiB)", mib(base.rss_kib), mib(max(s.rss_kib for s in loaded)), mib(end.rss_kib),
         f"{(end.rss_kib - base.rss_kib) / base.rss_kib:+.1%}", f"<= +{args.rss_tolerance:.0%}",
         "yes" if rss_ok else "**no**"),
        ("worker open fds", str(base.fds), str(max(s.fds for s in loaded)), str(end.fds),
         f"{end.fds - base.fds:+d}", f"<= +{args.fd_slack}", "yes" if fds_ok else "**no**"),
        ("in flight", f"{base.in_flight:g}", f"{max(s.in_flight for s in loaded):g}", f"{end.in_flight:g}",
         f"{end.in_flight - base.in_flight:+g}", "0 at the end", "yes" if flight_ok else "**no**"),
    ]
    kinds = tally.by_kind()
    kind_rows = [(name, str(sum(kinds.get(name, {}).values())),
                  ", ".join(f"{o}: {c:,}" for o, c in kinds.get(name, {}).items()) or "-") for name, _ in KINDS]
    command = ".venv/bin/python bench/soak.py " + " ".join(sys.argv[1:])
    chart_note = "![samples](soak.png)" if chart(samples, BENCH / "results" / "soak.png") \
        else "(no chart: matplotlib is not installed)"
    return "\n".join([
        f"# Soak: **{verdict}**", "",
        f"`{command.strip()}`: {loaded_s / 60:.1f} minutes of the mix at {rate:.0f} arrivals/s (half of "
        f"{capacity:.0f} plain chats/s measured at the start), one worker, samples every {args.every:g} s. "
        "Baseline: after the warm-up and a settle; end: after the load stopped and a settle "
        f"({args.settle_s:g} s once nothing was in flight).", "",
        table(("", "baseline", "peak under load", "end", "change", "allowed", "back"), rows, text_columns=1), "",
        "Requests of the load phase by kind (the client's outcome):", "",
        table(("kind", "requests", "outcomes"), kind_rows, text_columns=3), "",
        "The gateway's access log, the whole run (status and error: lines):", "",
        "```", json.dumps(access, indent=1), "```", "",
        chart_note, "",
        "<details><summary>Machine facts</summary>", "",
        facts_table(facts), "",
        "</details>", "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="the load phase")
    parser.add_argument("--quick", action="store_true", help="1 minute of load, 10 s of warm-up")
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--settle-s", type=float, default=10.0, help="after nothing is in flight any more")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--load", type=float, default=0.5, help="the arrival rate, a fraction of capacity")
    parser.add_argument("--rss-tolerance", type=float, default=0.10)
    parser.add_argument("--fd-slack", type=int, default=4)
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.warmup_s = 1.0, 10.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    bound = 5 + args.warmup_s + 63 + args.minutes * 60 + 60 + args.settle_s + 180
    with Deadline(bound), temp_dir("sluice-soak-") as work:
        markdown = asyncio.run(soak(args, work))
    path = write_result("soak.md", markdown)
    print(markdown.split("\n", 1)[0])
    log(f"report: {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
