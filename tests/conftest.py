"""Shared fixtures: real processes (mock upstream, gateway) on ephemeral ports, and raw upstream servers."""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent

# No hypothesis deadline anywhere in the suite: a deadline is a timing assertion, and on a loaded machine
# (2 cores running the gateway's processes beside the tests) it fails correct code.  Tests that choose their
# own settings keep them; this is the default they start from.
settings.register_profile("sluice", deadline=None)
settings.load_profile("sluice")

# The compiled extensions are checked in every run, not only in CI: a build that failed must not leave a local
# run testing the pure twins alone while it looks green.  SLUICE_REQUIRE_COMPILED=0 opts out (a machine without
# a C compiler), and so does SLUICE_NO_EXTENSIONS=1 (a deliberate pure run).  The tests' own checks
# (test_compiled_is_active_when_required) read the same variable; the twin parity tests run both either way.
os.environ.setdefault("SLUICE_REQUIRE_COMPILED", "0" if os.environ.get("SLUICE_NO_EXTENSIONS") == "1" else "1")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ["SLUICE_REQUIRE_COMPILED"] == "1" and (problem := _compiled_problem()):
        raise pytest.UsageError(
            f"the compiled extensions are required and {problem}.\n  Build them: `make venv` (or "
            "`.venv/bin/pip install -e . -v` to see the compiler's output); SLUICE_REQUIRE_COMPILED=0 runs the "
            "pure-Python twins alone.")


def _compiled_problem() -> str | None:
    """Why the compiled hot path is not the one in use, or None when it is."""
    import importlib

    for source in sorted((ROOT / "ext").glob("*.pyx")):
        try:
            importlib.import_module(f"sluice._native.{source.stem}")
        except ImportError as exc:
            return f"sluice._native.{source.stem} does not import ({exc})"
    from sluice._native import IMPLEMENTATION

    return None if IMPLEMENTATION == "compiled" else f"sluice._native picked the {IMPLEMENTATION} twins"


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):  # type: ignore[no-untyped-def]
        return json.loads(self.body)


def call(url: str, method: str = "GET", path: str = "/", body: bytes | dict | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10.0) -> Reply:
    """One raw HTTP/1.1 request on a fresh connection (http.client: nothing hidden)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # pacing: poll interval
    raise RuntimeError(f"port {port} did not open within {timeout}s:\n{log.read_text()[-3000:]}")


T = TypeVar("T")
# How long a poll waits for something that should happen at once: far beyond any healthy delay, so that only a
# real failure (never a slow, loaded machine) reaches it.
POLL_DEADLINE_S = 20.0


def wait_until(check: Callable[[], T], what: str, timeout: float = POLL_DEADLINE_S, interval: float = 0.05) -> T:
    """Polls ``check`` until it returns something truthy and returns that; fails naming ``what`` at the deadline.

    The way a test waits for an effect it cannot be told about (a file written, a change fed through, a counter
    moved): never a fixed sleep, which is too short on a loaded machine and wasted time on an idle one.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {result!r})")
        time.sleep(interval)  # pacing: poll interval


async def async_wait_until(check: Callable[[], Any], what: str = "the condition", timeout: float = POLL_DEADLINE_S,
                           interval: float = 0.02) -> Any:
    """wait_until for a test on an event loop: ``check`` may be a plain or an async function."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {result!r})")
        await asyncio.sleep(interval)  # pacing: poll interval


class Proc:
    """A sluice process on an ephemeral port; stopped with SIGTERM, then killed."""

    def __init__(self, args: list[str], port: int, log: Path, env: dict[str, str] | None = None,
                 stdout: int | None = None) -> None:
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        full_env = {**os.environ, **(env or {})}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sluice", *args], stdout=out if stdout is None else stdout,
                stderr=out, env=full_env, start_new_session=True,
            )
        wait_for_port(port, self.process, log)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def start_mock(tmp: Path, *extra: str) -> Proc:
    port = free_port()
    return Proc(["mock-upstream", "--port", str(port), *extra], port, tmp / f"mock-{port}.log")


def start_gateway(tmp: Path, config: str, *extra: str, env: dict[str, str] | None = None,
                  stdout: int | None = None) -> Proc:
    port = free_port()
    path = tmp / f"gateway-{port}.yaml"
    path.write_text(config)
    return Proc(["serve", "--config", str(path), "--port", str(port), *extra], port,
                tmp / f"gateway-{port}.log", env=env, stdout=stdout)


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """An asyncio server in a thread, speaking whatever bytes its handler writes (for broken upstreams)."""

    def __init__(self, handler: RawHandler) -> None:
        self.handler = handler
        self.loop = asyncio.new_event_loop()
        self.events: list[tuple[str, float]] = []
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.events.append(("open", time.monotonic()))
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                self.events.append(("closed", time.monotonic()))
                writer.close()

        self.server = self.loop.run_until_complete(asyncio.start_server(on_client, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Reads one request head and its content-length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("procs")


@pytest.fixture(scope="session")
def mock_upstream(session_tmp: Path) -> Iterator[Proc]:
    proc = start_mock(session_tmp)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def raw_upstream() -> Iterator[RawServer]:
    """An upstream whose behaviour is picked by the upstream model name in the request."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            if b'"raw-garbage"' in request:
                writer.write(b"THIS IS NOT HTTP\r\n\r\n")
            elif b'"raw-truncated"' in request:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\"")
            elif b'"raw-endless-stream"' in request:
                writer.write(SSE_HEAD)
                for i in range(200):
                    event = b'data: {"n": %d}\n\n' % i
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                    await asyncio.sleep(0.05)  # pacing: an endless stream, one event at a time
            elif b'"raw-json-for-stream"' in request:
                body = b'{"id": "x", "object": "chat.completion", "choices": []}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
            elif b'raw-html' in request:  # in the body (OpenAI, Anthropic) or the path (Gemini)
                body = b"<html><body>Bad gateway at the provider's edge</body></html>"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
            elif b'raw-wrong-json' in request:
                body = b'{"unexpected": ["shape"]}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
            elif b'"raw-hang"' in request:
                await asyncio.sleep(30)  # pacing: an upstream that never answers (beyond any read timeout)
            await writer.drain()
            writer.close()
            return

    server = RawServer(handler)
    yield server
    server.stop()


def gateway_config(mock_url: str, raw_url: str, *, read_timeout: float = 2.0, max_body: int = 65536) -> str:
    return f"""
server:
  max_body_bytes: {max_body}
  grace_period_s: 10
upstream:
  read_timeout_s: {read_timeout}
  connect_timeout_s: 1
providers:
  mock:
    kind: openai
    base_url: {mock_url}
    api_keys: [sk-upstream-1, sk-upstream-2]
    headers: {{x-extra: from-config}}
  raw:
    kind: openai
    base_url: {raw_url}
  closed:
    kind: openai
    base_url: http://127.0.0.1:{free_port()}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  text-embedding-3-small: {{targets: [{{provider: mock, model: text-embedding-3-small}}]}}
  alias-mini: {{targets: [{{provider: mock, model: gpt-4o}}]}}
  broken-500: {{targets: [{{provider: mock, model: mock-status-500}}]}}
  broken-429: {{targets: [{{provider: mock, model: mock-status-429}}]}}
  slow: {{targets: [{{provider: mock, model: mock-slow-5000}}]}}
  cut-stream: {{targets: [{{provider: mock, model: mock-cut-stream}}]}}
  unreachable: {{targets: [{{provider: closed, model: x}}]}}
  garbage: {{targets: [{{provider: raw, model: raw-garbage}}]}}
  truncated: {{targets: [{{provider: raw, model: raw-truncated}}]}}
  endless: {{targets: [{{provider: raw, model: raw-endless-stream}}]}}
  hang: {{targets: [{{provider: raw, model: raw-hang}}]}}
  json-for-stream: {{targets: [{{provider: raw, model: raw-json-for-stream}}]}}
"""


@pytest.fixture(scope="session", params=["rsgi", "asgi"])
def gateway(request: pytest.FixtureRequest, session_tmp: Path, mock_upstream: Proc,
            raw_upstream: RawServer) -> Iterator[Proc]:
    """The gateway on the test config, once over RSGI and once over ASGI."""
    proc = start_gateway(session_tmp, gateway_config(mock_upstream.url, raw_upstream.url),
                         "--interface", request.param)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the session (tests/postgres_server.py)."""
    from tests.postgres_server import start_postgres

    with start_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A StoreConfig on a fresh, empty database of each kind: a SQLite file, a new PostgreSQL database."""
    from sluice.config import StoreConfig

    if request.param == "sqlite":
        yield StoreConfig(sqlite_path=str(tmp_path / "store.db"), timeout_s=10.0)
        return
    server = request.getfixturevalue("postgres")
    name, url = server.create_database()
    try:
        yield StoreConfig(postgres_url=url, timeout_s=10.0)
    finally:
        server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real redis-server for the tests that only read and write keys (each under its own ``prefix``)."""
    from tests.redis_server import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Any]:
    """A real redis-server of the test's own, for tests that pause, kill or restart it."""
    from tests.redis_server import RedisServer

    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """Key names of this test's own on a shared server."""
    return f"test:{request.node.name}"


@pytest.fixture(scope="module", autouse=True)
def _collect_after_module() -> Iterator[None]:
    """A gc pass after each test module: an object left in a reference cycle (an unclosed socket held by a
    traceback, say) is then reported by the module that made it, not by whichever later test the collector happens
    to run in (filterwarnings = error turns its ResourceWarning into that test's failure)."""
    yield
    gc.collect()
