"""A real PostgreSQL for integration tests: a throwaway server of our own on an ephemeral port.

``PostgresServer`` runs ``initdb`` and ``postgres`` from ``/usr/lib/postgresql/<version>/bin``
(or the ``initdb`` on PATH) in a temporary directory: trust auth, listening on
127.0.0.1:<free port> with its socket in that directory, fsync off.  initdb
refuses to run as root, so as root both run as the ``postgres`` system user
(the directory is chowned to it).  Every wait is bounded; ``stop`` always ends
the server and ``close`` removes its files.

Without the binaries, or when ``SLUICE_TEST_POSTGRES_URL`` names a server (a CI
service, say), ``start_postgres`` uses that server (default: the machine's own,
``postgresql://postgres@127.0.0.1:5432/postgres``), where each test gets a
throwaway database ``sluice_test_<random>``; with neither it fails, saying what
to install.  Both kinds hand out databases the same way:
``create_database()`` answers (name, url), ``drop_database(name)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg
import pytest

from tests.conftest import free_port

CHOSEN_URL = os.environ.get("SLUICE_TEST_POSTGRES_URL")  # set: that server, never one of our own
FALLBACK_URL = CHOSEN_URL or "postgresql://postgres@127.0.0.1:5432/postgres"
_READY = "database system is ready to accept connections"


def find_bin() -> Path | None:
    """The directory of initdb and postgres: the newest /usr/lib/postgresql/*/bin, else PATH's initdb."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        newest = max(found, key=lambda p: [int(n) for n in re.findall(r"\d+", Path(p).parent.parent.name)] or [0])
        return Path(newest).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def admin(url: str, *statements: str, timeout: float = 10.0) -> None:
    """Runs statements on a fresh connection (outside any transaction, as CREATE DATABASE needs)."""

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            for statement in statements:
                await conn.execute(statement, timeout=timeout)
        finally:
            await conn.close(timeout=timeout)

    asyncio.run(run())


class _Databases:
    """Hands out throwaway databases on a server reached at ``admin_url``."""

    admin_url: str

    def url(self, database: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{database}"

    def create_database(self) -> tuple[str, str]:
        name = f"sluice_test_{secrets.token_hex(6)}"
        admin(self.admin_url, f'CREATE DATABASE "{name}"')
        return name, self.url(name)

    def drop_database(self, name: str) -> None:
        admin(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PostgresServer(_Databases):
    """``postgres`` on 127.0.0.1:<free port>: ``.stop()``, ``.start()`` (same port and data), ``.pause()``
    and ``.resume()`` (SIGSTOP/SIGCONT: a server that accepts nothing and answers nothing), ``.close()``."""

    def __init__(self, bin_dir: Path, *, start_timeout: float = 30.0) -> None:
        self.bin_dir = bin_dir
        self.start_timeout = start_timeout
        self.directory = Path(tempfile.mkdtemp(prefix="sluice-pg-"))  # not under pytest's 0700 root-owned tmp
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # initdb and postgres refuse root: run them as the postgres user
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        try:
            self._initdb()
            self.start()
        except BaseException:
            self.close()
            raise

    def _env(self) -> dict[str, str]:
        return {**os.environ, "LC_ALL": "C", "LANG": "C", "HOME": str(self.directory)}

    def _initdb(self) -> None:
        args = [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                "--locale=C", "--no-sync"]
        done = subprocess.run(args, capture_output=True, env=self._env(), cwd=self.directory,
                              timeout=self.start_timeout, check=False, **self._as)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout.decode()}\n{done.stderr.decode()}")

    def start(self) -> None:
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.directory),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "shared_buffers=32MB",
                "-c", "dynamic_shared_memory_type=mmap", "-c", "max_parallel_workers_per_gather=0"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=self._env(),
                                            cwd=self.directory, start_new_session=True, **self._as)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        offset = self.log.stat().st_size if self.log.exists() else 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{self._tail()}")
            if _READY in self._tail(offset):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            time.sleep(0.05)  # pacing: poll interval
        raise RuntimeError(f"postgres was not ready within {self.start_timeout}s:\n{self._tail()}")

    def _tail(self, offset: int = 0) -> str:
        try:
            with self.log.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")[-3000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _family(self) -> list[int]:
        """The postmaster and its children (each backend is the leader of a session of its own: no killpg)."""
        assert self.process is not None
        pids = [self.process.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(stat.read_text().rpartition(")")[2].split()[1]) == self.process.pid:
                    pids.append(int(stat.parent.name))
        return pids

    def _signal_all(self, signum: int) -> None:
        for pid in self._family():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def pause(self) -> None:
        """SIGSTOP to the server and its backends: connections hang, nothing is refused."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL to the whole group if it has not exited within 10 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_all(signal.SIGCONT)  # a paused server cannot shut down
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def kill(self) -> None:
        if self.process is None:
            return
        self._signal_all(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        """Stops the server and removes its files."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class ExistingServer(_Databases):
    """The machine's own PostgreSQL, used only through throwaway databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        admin(admin_url, "SELECT 1", timeout=5.0)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def start_postgres() -> Iterator[PostgresServer | ExistingServer]:
    """Our own server when the binaries are here, else the machine's; fails (never skips) with neither."""
    bin_dir = None if CHOSEN_URL else find_bin()
    server: PostgresServer | ExistingServer
    if bin_dir is not None:
        server = PostgresServer(bin_dir)
    else:
        try:
            server = ExistingServer(FALLBACK_URL)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            why = ("SLUICE_TEST_POSTGRES_URL is set" if CHOSEN_URL else
                   "initdb is not installed (apt-get install postgresql, as scripts/bootstrap.sh does)")
            pytest.fail(f"no PostgreSQL for the tests: {why} and {FALLBACK_URL} answered {type(exc).__name__}: {exc}",
                        pytrace=False)
    try:
        yield server
    finally:
        server.close()
