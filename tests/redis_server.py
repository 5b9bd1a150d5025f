"""A real redis-server on an ephemeral port, for integration tests: never the machine's Redis.

No persistence (``--save "" --appendonly no``), its files in a temporary
directory, DEBUG allowed from localhost (for ``DEBUG SLEEP``).  ``cluster=True``
starts a one-node Redis Cluster owning every slot, enough to drive a
``RedisCluster`` client.  Every wait is bounded; ``stop`` always ends the process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.conftest import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def encode(*args: str) -> bytes:
    """One command in RESP."""
    return f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)


def command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Sends one command on a fresh connection; the reply's first line, or a bulk string's content."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(encode(*args))
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return reply
            reply += chunk
            head, sep, rest = reply.partition(b"\r\n")
            if not sep:
                continue
            if not head.startswith(b"$"):
                return reply
            size = int(head[1:])
            if size < 0 or len(rest) >= size + 2:
                return rest[:max(size, 0)]


class RedisServer:
    """``redis-server --port <free>``: ``.url``, ``.stop()``, ``.kill()`` (SIGKILL), ``.restart()`` (same port)."""

    def __init__(self, directory: Path, *, cluster: bool = False, start_timeout: float = 10.0) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.start_timeout = start_timeout
        self.port = free_port()
        self.bus_port = free_port() if cluster else 0  # the cluster bus (default: port + 10000, may not exist)
        self.url = f"redis://127.0.0.1:{self.port}/0" if not cluster else f"redis://127.0.0.1:{self.port}"
        self.log = directory / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--logfile", "", "--enable-debug-command", "local"]
        if self.cluster:
            nodes = self.directory / f"nodes-{self.port}.conf"
            nodes.unlink(missing_ok=True)
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(nodes),
                     "--cluster-port", str(self.bus_port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self._tail()}")
            try:
                if command(self.port, "PING", timeout=0.5) == b"+PONG\r\n":
                    break
            except OSError:
                pass
            time.sleep(0.02)  # pacing: poll interval
        else:
            raise RuntimeError(f"redis-server did not answer PING within {self.start_timeout}s:\n{self._tail()}")
        if self.cluster:
            command(self.port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
            while b"cluster_state:ok" not in command(self.port, "CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster did not come up within {self.start_timeout}s:\n{self._tail()}")
                time.sleep(0.02)  # pacing: poll interval

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 5 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything gracefully."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=5)
        self.process = None

    def restart(self) -> None:
        """Stops it if it runs, then starts it again on the same port (empty: nothing is persisted)."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
