"""Memory kept after streams held paused end: a repro that looks inside the worker.

    .venv/bin/python bench/paused_rss.py [--readers 200] [--rounds 2] [--pure] [--control]

One `sluice serve --workers 1` (RSGI) in front of `sluice mock-upstream --interface asgi --stream-bytes 4000000`.
A round: ``--readers`` stalled readers (bench/slow_readers.py's ``stall``: head and first event read, then
nothing), held until the gateway cuts them (``client_stalled``, backlog.STALL_S) plus 3 s, then closed.
``--control``: the readers read their streams to the end instead (nothing is ever paused).  ``--pure``: the
pure-Python twins (SLUICE_NO_EXTENSIONS=1).  After each round and a settle, the worker's RSS and, from a probe
loaded into the worker (a sitecustomize on PYTHONPATH: a thread that answers a trigger file with
``gc.collect()``, ``malloc_trim(0)``, counts of live objects by type and tracemalloc's top growth since the
first snapshot, with ``--tracemalloc``: started at the first ask, after warm-up), what is still alive.
127.0.0.1 only, bounded.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.conftest import Proc, free_port, start_mock  # noqa: E402

from slow_readers import rss_kib, stall, worker_of  # noqa: E402

PROBE = textwrap.dedent('''
    import ctypes, gc, json, os, sys, threading, time, tracemalloc
    _dir = os.environ.get("SLUICE_PROBE_DIR")
    def _loop():
        first = None
        while True:
            time.sleep(0.3)
            for name in os.listdir(_dir):
                if not name.startswith("ask-") or not name.endswith(f"-{os.getpid()}"):
                    continue
                os.unlink(os.path.join(_dir, name))
                if os.environ.get("SLUICE_PROBE_TRACE") and not tracemalloc.is_tracing():
                    tracemalloc.start(8)
                def rss():
                    with open("/proc/self/status") as f:
                        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS:"))
                steps = {"rss_mib": rss()}
                steps["connections_alive"] = sum(type(o).__name__ == "Connection" for o in gc.get_objects())
                steps["unreachable"] = gc.collect()
                steps["rss_mib_after_gc"] = rss()
                try:
                    ctypes.CDLL("libc.so.6").malloc_trim(0)
                except OSError:
                    pass
                steps["rss_mib_after_trim"] = rss()
                counts = {}
                big = 0
                for o in gc.get_objects():
                    t = type(o).__qualname__
                    counts[t] = counts.get(t, 0) + 1
                top = sorted(counts.items(), key=lambda kv: -kv[1])[:25]
                report = {**steps, "objects": top[:8], "gc_objects": sum(counts.values())}
                if tracemalloc.is_tracing():
                    snap = tracemalloc.take_snapshot()
                    report["traced_mib"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
                    if first is None:
                        first = snap
                    else:
                        report["growth"] = [str(s) for s in snap.compare_to(first, "lineno")[:12]]
                with open(os.path.join(_dir, "answer-" + name[4:]), "w") as f:
                    json.dump(report, f)
    def _start():
        threading.Thread(target=_loop, daemon=True, name="sluice-probe").start()
    if _dir:
        _start()
        os.register_at_fork(after_in_child=_start)  # Granian forks its workers
''')


def ask(probe: Path, pid: int, tag: str) -> dict[str, object]:
    (probe / f"ask-{tag}-{pid}").write_text("")
    answer = probe / f"answer-{tag}-{pid}"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if answer.exists() and answer.stat().st_size:
            time.sleep(0.2)
            return json.loads(answer.read_text())  # type: ignore[no-any-return]
        time.sleep(0.2)
    return {"probe": "no answer"}


def read_all(port: int) -> None:
    sock = stall(port, 1 << 20)
    with sock:
        sock.settimeout(60)
        while True:
            piece = sock.recv(1 << 20)
            if not piece or piece.endswith(b"0\r\n\r\n"):
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readers", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pure", action="store_true")
    parser.add_argument("--control", action="store_true")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--stall-s", type=float, default=14.0)
    parser.add_argument("--probe-last", action="store_true",
                        help="ask the probe (gc.collect, malloc_trim) only after the last round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluice-paused-") as tmp:
        work = Path(tmp)
        probe = work / "probe"
        probe.mkdir()
        (probe / "sitecustomize.py").write_text(PROBE)
        mock = start_mock(work, "--interface", "asgi", "--stream-bytes", "4000000")
        port = free_port()
        env = {"SLUICE_UPSTREAM": mock.url, "SLUICE_PORT": str(port), "SLUICE_PROBE_DIR": str(probe),
               "PYTHONPATH": str(probe)}
        if args.pure:
            env["SLUICE_NO_EXTENSIONS"] = "1"
        if args.tracemalloc:
            env["SLUICE_PROBE_TRACE"] = "1"
        gateway = Proc(["serve", "--config", str(ROOT / "examples" / "quickstart.yaml"), "--workers", "1"], port,
                       work / "gateway.log", env=env)
        try:
            worker = worker_of(gateway)
            for _ in range(5):
                read_all(port)
            stall(port, 65536).close()
            time.sleep(2)
            report = {"pure": args.pure, "control": args.control, "readers": args.readers,
                      "rss_mib": [round(rss_kib(worker) / 1024, 1)], "probe": []}
            if not args.probe_last:
                report["probe"].append(ask(probe, worker, "0"))
            for r in range(args.rounds):
                if args.control:
                    threads = [threading.Thread(target=read_all, args=(port,)) for _ in range(args.readers)]
                    for i in range(0, len(threads), 20):
                        for t in threads[i:i + 20]:
                            t.start()
                        for t in threads[i:i + 20]:
                            t.join()
                else:
                    socks: list[socket.socket] = [stall(port, 65536) for _ in range(args.readers)]
                    time.sleep(args.stall_s)
                    for s in socks:
                        s.close()
                time.sleep(5)
                report["rss_mib"].append(round(rss_kib(worker) / 1024, 1))
                if not args.probe_last or r == args.rounds - 1:
                    report["probe"].append(ask(probe, worker, str(r + 1)))
                    report["rss_mib"].append(round(rss_kib(worker) / 1024, 1))
            print(json.dumps(report, indent=1))
        finally:
            gateway.stop()
            mock.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
