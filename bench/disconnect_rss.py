"""Callers that leave mid-stream: is each accounted once, and does the worker's memory stay where it was?

    .venv/bin/python bench/disconnect_rss.py [--interface rsgi|asgi] [--cancels 2000] [--rounds 1]

`sluice mock-upstream --chunk-ms 300` and examples/quickstart.yaml with one worker, its access log to a
file.  A cancel: POST a streamed chat, read until the first `data:` event, close the socket (50 at a
time).  After 300 cancels of warm-up, `--cancels` more per round; then it reports the worker's RSS before
and after each round, `sluice_requests_in_flight`, the requests counted, and the access-log lines with
error `client_disconnected`.  The regression test with a bounded count is
tests/integration/test_client_disconnect.py; this is the issue's figure (2,000 cancels), on 127.0.0.1 only,
bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Proc, call, free_port, start_mock  # noqa: E402  (the suite's process helpers)

BODY = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi " * 50}]})
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY.encode()))


def cancels(port: int, count: int, batch: int = 50) -> None:
    done = 0
    while done < count:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(min(batch, count - done))]
        for s in socks:
            s.sendall(REQUEST)
        for s in socks:
            seen = b""
            while b"data:" not in seen:
                piece = s.recv(65536)
                if not piece:
                    raise SystemExit("the gateway closed a stream before its first event")
                seen += piece
        for s in socks:
            s.close()
        done += len(socks)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def metrics(url: str) -> dict[str, float]:
    found = {"in_flight": 0.0, "counted": 0.0}
    for line in call(url, path="/metrics").body.decode().splitlines():
        if line.startswith("sluice_requests_in_flight"):
            found["in_flight"] = float(line.split()[-1])
        if line.startswith("sluice_requests_total") and 'route="/v1/chat/completions"' in line:
            found["counted"] += float(line.split()[-1])
    return found


def settled(url: str, log: Path, limit_s: float = 30.0) -> tuple[dict[str, float], int]:
    """The metrics and the client_disconnected lines, once neither has changed for 2 s (at most ``limit_s``)."""
    last: tuple[dict[str, float], int] | None = None
    since = start = time.monotonic()
    while time.monotonic() - start < limit_s:
        now = (metrics(url), sum('"client_disconnected"' in line for line in log.read_text().splitlines()))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 2:
            break
        time.sleep(0.2)
    assert last is not None
    return last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interface", choices=("rsgi", "asgi"), default="rsgi")
    parser.add_argument("--cancels", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluice-disconnect-") as tmp:
        work = Path(tmp)
        log = work / "access.log"
        config = work / "gateway.yaml"
        config.write_text((ROOT / "examples" / "quickstart.yaml").read_text()
                          + f"observability: {{access_log_path: \"{log}\"}}\n")
        mock = start_mock(work, "--chunk-ms", "300")
        port = free_port()
        gateway = Proc(["serve", "--config", str(config), "--workers", "1", "--interface", args.interface], port,
                       work / "gateway.log", env={"SLUICE_UPSTREAM": mock.url, "SLUICE_PORT": str(port)})
        try:
            children = subprocess.run(["pgrep", "-P", str(gateway.process.pid)], capture_output=True,
                                      text=True).stdout.split()
            worker = int(children[-1])
            cancels(port, 300)  # warm-up: pools, caches, allocator arenas
            before_metrics, before_lines = settled(gateway.url, log)
            before = rss_kib(worker)
            started = time.monotonic()
            rounds = []
            for _ in range(args.rounds):
                cancels(port, args.cancels)
                settled(gateway.url, log)
                rounds.append(rss_kib(worker))
            after_metrics, after_lines = settled(gateway.url, log)
            print(json.dumps({
                "interface": args.interface, "cancels": args.cancels * args.rounds,
                "seconds": round(time.monotonic() - started, 1), "rss_before_kib": before,
                "rss_after_rounds_kib": rounds,
                "rss_change": f"{(rounds[-1] - before) / before:+.1%}",
                "in_flight_after": after_metrics["in_flight"],
                "counted": after_metrics["counted"] - before_metrics["counted"],
                "client_disconnected_lines": after_lines - before_lines,
            }))
        finally:
            gateway.stop()
            mock.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
