"""Callers that stop reading a large stream: how much memory does the gateway's worker hold for them?

    .venv/bin/python bench/slow_readers.py [--interface rsgi asgi] [--readers 1000] [--stream-mb 4]
                                           [--stall-s 30] [--rss-limit-mb 6000]

For each interface: `sluice mock-upstream --interface asgi --stream-bytes N` (each streamed chat is
padded to N bytes with ~4 KB events; served over ASGI, whose writes wait for the reader, so the mock
itself never queues a stream the gateway does not read) and examples/quickstart.yaml with one worker, its
access log to a file.  A stalled reader: a socket with a small receive buffer (``--rcvbuf``, 64 KiB) that
POSTs a streamed chat, reads the response head and the first ``data:`` event, then stops reading and keeps
the socket open.  The readers connect ``--batch`` at a time; the worker's RSS (/proc) is sampled every
0.5 s from before the first until ``--stall-s`` after the last, then every socket is closed and the access
log's lines for the streams are counted by status and error.  A run stops early (and says so) when the
worker passes ``--rss-limit-mb``, so that an unbounded worker cannot take the machine's memory.

127.0.0.1 only, bounded in time (~``--stall-s`` + the connects + 30 s of settling per interface).  The
bounded regression test is tests/integration/test_slow_readers.py; this is the issue's figure.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Proc, free_port, start_mock  # noqa: E402  (the suite's process helpers)

BODY = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY.encode()))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def stall(port: int, rcvbuf: int) -> socket.socket:
    """A reader that read the head and the first event and reads no more."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window it advertises
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port))
    sock.sendall(REQUEST)
    seen = b""
    while b"data:" not in seen:
        piece = sock.recv(4096)  # small reads: the reader takes little more than the first event
        if not piece:
            raise SystemExit(f"the gateway closed a stream before its first event: {seen[:300]!r}")
        seen += piece
    if not seen.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"the gateway answered {seen[:300]!r}")
    return sock


def worker_of(proc: Proc) -> int:
    children = subprocess.run(["pgrep", "-P", str(proc.process.pid)], capture_output=True, text=True).stdout.split()
    if not children:
        raise SystemExit(f"no worker under {proc.process.pid}")
    return int(children[-1])


def log_counts(log: Path) -> dict[str, int]:
    """Access-log lines of the chat route by "status error"."""
    counts: collections.Counter[str] = collections.Counter()
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("route") == "/v1/chat/completions":
            counts[f"{entry.get('status')} {entry.get('error') or '-'}"] += 1
    return dict(counts)


def run(interface: str, args: argparse.Namespace, work: Path) -> dict[str, object]:
    log = work / f"access-{interface}.log"
    config = work / f"gateway-{interface}.yaml"
    config.write_text((ROOT / "examples" / "quickstart.yaml").read_text()
                      + f"observability: {{access_log_path: \"{log}\"}}\n")
    mock = start_mock(work, "--interface", "asgi", "--stream-bytes", str(args.stream_mb * 1_000_000))
    port = free_port()
    gateway = Proc(["serve", "--config", str(config), "--workers", "1", "--interface", interface], port,
                   work / f"gateway-{interface}.log", env={"SLUICE_UPSTREAM": mock.url, "SLUICE_PORT": str(port)})
    socks: list[socket.socket] = []
    samples: list[tuple[float, int]] = []
    stopped = ""
    try:
        worker = worker_of(gateway)
        stall(port, args.rcvbuf).close()  # one warm-up stream: the upstream pool, the first imports
        time.sleep(1)
        started = time.monotonic()
        before = rss_kib(worker)
        limit = args.rss_limit_mb * 1024
        last_sample = 0.0

        def sample() -> bool:
            nonlocal last_sample
            if time.monotonic() - last_sample >= 0.5:
                last_sample = time.monotonic()
                samples.append((round(last_sample - started, 1), rss_kib(worker)))
                return samples[-1][1] < limit
            return True

        while len(socks) < args.readers and not stopped:
            for _ in range(min(args.batch, args.readers - len(socks))):
                socks.append(stall(port, args.rcvbuf))
            if not sample():
                stopped = f"stopped at {len(socks)} readers: the worker passed {args.rss_limit_mb} MB"
        connected = time.monotonic() - started
        end = time.monotonic() + args.stall_s
        while time.monotonic() < end and not stopped:
            time.sleep(0.1)
            if not sample():
                stopped = f"stopped {time.monotonic() - started - connected:.0f} s after the last connect: " \
                          f"the worker passed {args.rss_limit_mb} MB"
        held = rss_kib(worker)
        for sock in socks:
            sock.close()
        socks.clear()
        lines: dict[str, int] = {}
        settle_end = time.monotonic() + 30
        while time.monotonic() < settle_end:  # until every stream's line is written (at most 30 s)
            time.sleep(1)
            lines = log_counts(log)
            if sum(lines.values()) >= args.readers + 1:
                break
        time.sleep(2)
        closed = rss_kib(worker)
        peak = max(rss for _, rss in samples)
        return {
            "interface": interface, "readers": args.readers, "stream_bytes": args.stream_mb * 1_000_000,
            "rcvbuf": args.rcvbuf, "connect_s": round(connected, 1), "stall_s": args.stall_s,
            "rss_before_mib": round(before / 1024, 1), "rss_peak_mib": round(peak / 1024, 1),
            "rss_at_end_mib": round(held / 1024, 1), "rss_after_close_mib": round(closed / 1024, 1),
            "peak_growth_per_reader_kib": round((peak - before) / max(1, args.readers), 1),
            "access_log (status error: lines, warm-up included)": lines, "stopped": stopped or None,
            "rss_samples_s_mib": [(t, round(r / 1024)) for t, r in samples[:: max(1, len(samples) // 20)]],
        }
    finally:
        for sock in socks:
            sock.close()
        gateway.stop()
        mock.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interface", nargs="+", choices=("rsgi", "asgi"), default=["rsgi", "asgi"])
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--stream-mb", type=int, default=4, help="the upstream stream's size, MB (10^6 bytes)")
    parser.add_argument("--stall-s", type=float, default=30.0, help="how long the readers stay stalled")
    parser.add_argument("--batch", type=int, default=50, help="readers connected at a time")
    parser.add_argument("--rcvbuf", type=int, default=65536, help="each reader's SO_RCVBUF")
    parser.add_argument("--rss-limit-mb", type=int, default=6000, help="stop a run whose worker passes this")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the readers' sockets, and the gateway's (inherited)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.readers + 1024)), hard))
    with tempfile.TemporaryDirectory(prefix="sluice-slow-readers-") as tmp:
        for interface in args.interface:
            print(json.dumps(run(interface, args, Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
