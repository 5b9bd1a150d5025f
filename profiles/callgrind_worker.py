"""Instructions per request of one sluice gateway worker under callgrind: the measuring code shared by
``profiles/server_instructions.py`` (any config snippets) and the performance gate
(``profiles/instruction_gate.py``, run by ``tests/perf/``).

One measurement: ``sluice serve`` with one worker, pinned to CPU 0, under ``valgrind --tool=callgrind
--trace-children=yes --separate-threads=yes --instr-atstart=no`` (uninstrumented until the worker is up: it
starts in ~10-25 s instead of ~45-50 s on 2 busy cores), in front of ``Upstream``: a tiny Python server in
this process answering every chat POST with the benchmark's real OpenAI answer (``bench/_harness.py``'s
``CHAT_COMPLETION``, 629 bytes) with nginx's response head.  The client sends the benchmark's request
(``chat_request``, 324 bytes, with an ``Authorization: Bearer`` key).  Instrumentation on
(``callgrind_control -i on``), ``warmup`` keep-alive POSTs, then the worker's counters are zeroed
(``callgrind_control -z``), ``requests`` more POSTs are sent (over ``connections`` keep-alive connections
at once, one client thread each) and the counters dumped (``callgrind_control -d``).  Instructions per
request = the instructions counted / ``requests``, for the event loop's thread (where all of sluice runs)
and for all of the worker's threads.

Instruction counts do not depend on the machine's speed or load: they move with the code, the Python
build and the versions of Granian and uvloop.  What they leave out: cache misses and the kernel's
share (syscalls).  ``PYTHONHASHSEED=0``: the same dict probes in every run.

Timers run on wall-clock time, which valgrind stretches about ``slowdown`` times (measured: ~37 at one
connection), so a metrics snapshot every second or an access-log flush every 50 ms would fire that
many times more often per request than in a real server and be charged to every request.  The worker
is started with those intervals multiplied by ``slowdown`` (a sitecustomize that changes the defaults
of ``Metrics`` and ``AccessLog``); a config's own intervals (e.g. ``auth.revocation_poll_s``) are the
snippet's to stretch.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import _harness as h  # noqa: E402  (bench/ is not a package)

MODEL = "gpt-4o-mini"
CHAT_PATH = h.CHAT_PATH
# The benchmark's request (bench/_harness.py, bench/post.lua): a 324-byte chat, with the API key real clients
# send.  It is sent to every config, with auth or without, so that configs differ only by what the gateway does.
REQUEST_BODY = h.chat_request(MODEL)
ANSWER = h.CHAT_COMPLETION.encode()  # the benchmark's 629-byte chat.completion, usage at the end
API_KEY = h.BENCH_API_KEY
REQUEST_HEADERS = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}

# Imported by every Python process of the gateway (its PYTHONPATH): timers stretched by valgrind's slowdown.
SITECUSTOMIZE = """\
from sluice.observability.access_log import AccessLog
from sluice.observability.metrics import Metrics

Metrics.__init__.__kwdefaults__["flush_interval_s"] *= {slowdown}
AccessLog.__init__.__kwdefaults__["flush_interval_s"] *= {slowdown}
"""


class MeasureError(h.BenchError):
    """The measurement could not be made (the gateway did not start, answered an error, no dump...)."""


def tools_missing() -> list[str]:
    return [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]


# -- the upstream ------------------------------------------------------------------------


def _answer(body: bytes, content_type: str = "application/json") -> bytes:
    """A 200 with nginx's head (``return 200 '...'``): Server, Date, Content-Type, Content-Length, Connection;
    the Date is always 29 characters, so every answer has the same length."""
    return (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Connection: keep-alive\r\n\r\n%s" % (email.utils.formatdate(usegmt=True).encode(),
                                                   content_type.encode(), len(body), body))


class _UpstreamHandler(socketserver.StreamRequestHandler):
    server: _UpstreamServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        while True:  # keep-alive: requests one after the other on this connection
            request_line = self.rfile.readline(65537)
            if not request_line:
                return
            length = 0
            size = len(request_line)
            while (line := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                size += len(line)
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = self.rfile.read(length) if length else b""
            self.server.request_sizes.add(size + 2 + len(body))
            path = request_line.split(b" ")[1] if b" " in request_line else b""
            if path.startswith(CHAT_PATH.encode()):
                answer = _answer(ANSWER)
            elif path == b"/v1/traces":  # OTLP/HTTP: an empty ExportTraceServiceResponse
                answer = _answer(b"", "application/x-protobuf")
            else:
                answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
            self.wfile.write(answer)  # one write: head and body in one segment, every time


class _UpstreamServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_sizes: set[int]


class Upstream:
    """The provider: a threaded server on an ephemeral port answering every chat POST with the benchmark's
    real OpenAI chat.completion (bench/_harness.py, usage at the end) in one write, and OTLP trace
    exports at /v1/traces with an empty 200.  Its speed does not matter (the worker's instructions are
    counted), its answer does: the same bytes every time."""

    def __init__(self) -> None:
        self._server = _UpstreamServer(("127.0.0.1", 0), _UpstreamHandler)
        self._server.request_sizes = set()
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="upstream", daemon=True)

    @property
    def request_sizes(self) -> set[int]:
        """The sizes (bytes, head and body) of the requests the gateway sent so far."""
        return self._server.request_sizes

    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# -- the client --------------------------------------------------------------------------


def send(port: int, count: int, connections: int = 1, headers: Mapping[str, str] | None = None) -> None:
    """``count`` chat POSTs over ``connections`` keep-alive connections at once (one thread each); every
    answer must be a 200."""
    failures: list[str] = []
    head = dict(REQUEST_HEADERS if headers is None else headers)

    def one(share: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            for _ in range(share):
                connection.request("POST", CHAT_PATH, REQUEST_BODY, head)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    failures.append(f"the gateway answered {response.status}: {body[:300]!r}")
                    return
        except (OSError, http.client.HTTPException) as exc:
            failures.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(count // connections + (i < count % connections),))
               for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise MeasureError(failures[0])


def _wait_up(proc: h.Proc, port: int, timeout: float, headers: Mapping[str, str] | None) -> None:
    end = time.monotonic() + timeout
    last = ""
    while time.monotonic() < end:
        if proc.popen.poll() is not None:
            raise MeasureError(f"the gateway exited with code {proc.popen.returncode}:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError as exc:
            last = repr(exc)
            time.sleep(1)
            continue
        try:
            send(port, 1, headers=headers)
            return
        except MeasureError as exc:
            last = str(exc)
            if "the gateway answered" in last:  # it serves, and refuses: the config or the request is wrong
                raise MeasureError(f"{last}\n{proc.tail()}") from None
            time.sleep(1)
    raise MeasureError(f"the gateway did not answer within {timeout:.0f} s ({last}):\n{proc.tail()}")


# -- one measurement ---------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    loop: float  # instructions per request of the event loop's thread (where all of sluice runs)
    total: float  # of all of the worker's threads (Granian's too; their spinning makes this noisier)
    requests: int
    connections: int
    seconds: float  # wall-clock time of the whole measurement, valgrind's start included
    start_seconds: float  # of which until the gateway answered its first request
    upstream_request_bytes: tuple[int, ...]  # the sizes of the requests the gateway sent upstream


def gateway_yaml(snippet: str, upstream_url: str) -> str:
    """The snippet (``{upstream}`` in it stands for the upstream's URL, e.g. a trace endpoint) and one
    provider (the upstream) and one model routed to it."""
    return f"""{snippet.replace("{upstream}", upstream_url)}
providers: {{u1: {{kind: openai, base_url: "{upstream_url}"}}}}
models: {{{MODEL}: {{targets: [{{provider: u1, model: {MODEL}}}]}}}}
"""


def measure(procs: h.Processes, tmp: Path, name: str, snippet: str, upstream: Upstream, *, requests: int,
            warmup: int = 500, connections: int = 1, slowdown: float = 40.0, pythonpath: str | None = None,
            extra_site: str = "", env: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
            start_timeout: float = 300.0, server: Callable[[int], list[str]] | None = None,
            interface: str = "rsgi") -> Measurement:
    """Instructions per request of one gateway worker on the config ``snippet``.

    ``interface``: the Granian interface ``sluice serve`` is started with (``--interface``, always given, so
    that a change of the CLI's default does not change what is measured).

    ``pythonpath`` runs another version of sluice (its src/ or an install --target); ``extra_site`` is
    Python appended to the worker's sitecustomize (e.g. an injected slowdown), ``env`` more environment;
    ``server`` (port -> argv) serves something else than ``sluice serve`` the same way (the raw floor: its
    one Granian worker is measured like the gateway's, ``snippet`` unused).
    The gateway runs in ``tmp/name`` (its relative paths, e.g. the SQLite store, land there)."""
    started = time.monotonic()
    upstream.request_sizes.clear()
    work = tmp / name
    site = work / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(slowdown=slowdown) + extra_site)
    config = work / "gateway.yaml"
    config.write_text(gateway_yaml(snippet, upstream.url))
    port = h.free_port()
    out = work / "callgrind.out"
    full_env = {**os.environ, **(env or {}),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(site), pythonpath])), "PYTHONHASHSEED": "0"}
    served = (server(port) if server is not None else
              [str(ROOT / ".venv/bin/sluice"), "serve", "--config", str(config), "--port", str(port), "--workers", "1",
               "--interface", interface])
    argv = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--separate-threads=yes", "--instr-atstart=no",
            f"--callgrind-out-file={out}.%p", *served]
    proc = procs.start(name, argv, cpu=0, env=full_env, cwd=work)
    try:
        _wait_up(proc, port, start_timeout, headers)
        up = time.monotonic() - started
        if "Error in sitecustomize" in proc.tail(200):
            raise MeasureError(f"the worker's sitecustomize failed (timers not stretched):\n{proc.tail()}")
        children = subprocess.run(["pgrep", "-P", str(proc.popen.pid)], capture_output=True, text=True).stdout.split()
        if not children:
            raise MeasureError(f"no worker process under {proc.popen.pid}")
        worker = children[-1]
        subprocess.run(["callgrind_control", "-i", "on", worker], check=True, capture_output=True, timeout=120)
        send(port, warmup, connections, headers)
        subprocess.run(["callgrind_control", "-z", worker], check=True, capture_output=True, timeout=120)
        send(port, requests, connections, headers)
        subprocess.run(["callgrind_control", "-d", worker], check=True, capture_output=True, timeout=120)
    finally:
        procs.stop(proc, timeout=30)
    # Thread number -> instructions since the zeroing: the summary line of the dump's part 1 (-z then -d).  Not
    # its totals line, which also holds costs of the calls still open at the zeroing (the event loop's run,
    # since the start: thousands of instructions a request more, and varying with how the start went).
    threads = {}
    for dump in work.glob(f"callgrind.out.{worker}.1-*"):
        summary = [line for line in dump.read_text().splitlines() if line.startswith("summary:")]
        threads[int(dump.name.rsplit("-", 1)[1])] = int(summary[0].split()[1]) if summary else 0
    if not threads:
        raise MeasureError(f"no callgrind dump of worker {worker} in {work}")
    return Measurement(loop=threads[min(threads)] / requests, total=sum(threads.values()) / requests,
                       requests=requests, connections=connections, seconds=time.monotonic() - started, start_seconds=up,
                       upstream_request_bytes=tuple(sorted(upstream.request_sizes)))


@contextlib.contextmanager
def session(tmp: Path) -> Iterator[tuple[h.Processes, Upstream]]:
    """The processes of a run (stopped at the end, whatever happens) and the upstream they call."""
    with h.Processes(tmp) as procs, Upstream() as upstream:
        yield procs, upstream
