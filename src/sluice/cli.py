"""The ``sluice`` command: serve, mock-upstream, check-config, db (migrate, version), version."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import msgspec

from . import __version__
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config
    from .store import Store

__all__ = ["main"]

EXIT_CONFIG = 2
EXIT_STORE = 1  # the store could not be reached or failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    result: int = args.run(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="A high-throughput LLM/API gateway.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the gateway")
    serve.add_argument("--config", required=True, help="the YAML config file")
    serve.add_argument("--host", help="address to bind (default: server.host of the config)")
    serve.add_argument("--port", type=int, help="port to bind (default: server.port of the config)")
    serve.add_argument("--workers", type=int, help="worker processes (default: server.workers of the config)")
    serve.add_argument("--interface", choices=("rsgi", "asgi"), default="rsgi",
                       help="Granian interface: rsgi (native, faster) or asgi")
    serve.set_defaults(run=_serve)

    mock = commands.add_parser("mock-upstream",
                               help="serve a mock LLM provider (OpenAI, Anthropic, Gemini and Azure wire formats)")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9000)
    mock.add_argument("--workers", type=int, default=1)
    mock.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    mock.add_argument("--chunk-ms", type=float, default=0.0, help="delay between stream events")
    mock.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests that fail (0..1)")
    mock.add_argument("--error-status", type=int, default=500, help="status of those failures")
    mock.add_argument("--seed", type=int, help="seed for the error draw (reproducible faults)")
    mock.set_defaults(run=_mock)

    check = commands.add_parser("check-config", help="validate a config file without serving")
    check.add_argument("config")
    check.set_defaults(run=_check_config)

    db = commands.add_parser("db", help="the store of keys, users and audit: migrate, version")
    db_actions = db.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    db_migrate = db_actions.add_parser("migrate", help="apply the missing schema migrations")
    db_migrate.add_argument("--config", required=True, help="the YAML config file (its store section)")
    db_migrate.set_defaults(run=_db_migrate)
    db_version = db_actions.add_parser("version", help="print the store's schema version")
    db_version.add_argument("--config", required=True, help="the YAML config file (its store section)")
    db_version.set_defaults(run=_db_version)

    version = commands.add_parser("version", help="print the version and the hot path in use")
    version.set_defaults(run=_version)
    return parser


def _load(path: str) -> Config | None:
    """The config at ``path``, or None after saying what is wrong with it."""
    from .config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"sluice: invalid config: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from .runner import serve

    server = config.server
    workers = args.workers or server.workers
    if workers < 1:
        print("sluice: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    entry = "sluice.server.entry:rsgi_app" if args.interface == "rsgi" else "sluice.server.entry:asgi_app"
    # The workers' metrics snapshots meet here: one directory per `sluice serve`, gone with it.
    metrics_dir = tempfile.mkdtemp(prefix="sluice-metrics-")
    try:
        serve(entry, host=args.host or server.host, port=server.port if args.port is None else args.port,
              workers=workers, interface=args.interface, grace_period_s=server.grace_period_s,
              env={"SLUICE_CONFIG": os.path.abspath(args.config), "SLUICE_METRICS_DIR": metrics_dir})
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _mock(args: argparse.Namespace) -> int:
    from .mock import MockOptions
    from .runner import serve

    if not 0.0 <= args.error_rate <= 1.0:
        print("sluice: --error-rate must be between 0 and 1", file=sys.stderr)
        return EXIT_CONFIG
    if not 100 <= args.error_status <= 599:
        print("sluice: --error-status must be an HTTP status (100..599)", file=sys.stderr)
        return EXIT_CONFIG
    options = MockOptions(latency_ms=args.latency_ms, chunk_ms=args.chunk_ms, error_rate=args.error_rate,
                          error_status=args.error_status, seed=args.seed)
    serve("sluice.mock.entry:rsgi_app", host=args.host, port=args.port, workers=args.workers,
          grace_period_s=5, env={"SLUICE_MOCK_OPTIONS": msgspec.json.encode(options).decode()},
          log_level="warning")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    print(f"{args.config}: ok ({len(config.providers)} providers, {len(config.models)} models)")
    return 0


def _db_migrate(args: argparse.Namespace) -> int:
    async def migrate(store: Store) -> None:
        from .store.migrations import latest_version

        applied = await store.migrate()
        for number, name in applied:
            print(f"applied {number:04d}_{name}")
        current = await store.current_version()
        state = "migrated to" if applied else "up to date at"
        print(f"{store.dialect} {store.location}: {state} version {current} (latest {latest_version(store.dialect)})")

    return _with_store(args.config, migrate)


def _db_version(args: argparse.Namespace) -> int:
    async def version(store: Store) -> None:
        from .store.migrations import latest_version

        current, latest = await store.current_version(), latest_version(store.dialect)
        pending = f", {latest - current} pending: run `sluice db migrate`" if current < latest else ""
        print(f"{store.dialect} {store.location}: version {current} (latest {latest}){pending}")

    return _with_store(args.config, version)


def _with_store(config_path: str, action: Callable[[Store], Awaitable[None]]) -> int:
    """Runs ``action`` on the store the config names; 1 when the store fails."""
    import asyncio

    from .store import StoreError, open_store

    config = _load(config_path)
    if config is None:
        return EXIT_CONFIG
    store = open_store(config.store)

    async def run() -> None:
        try:
            await action(store)
        finally:
            await store.aclose()

    try:
        asyncio.run(run())
    except StoreError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_STORE
    return 0


def _version(args: argparse.Namespace) -> int:
    from ._native import IMPLEMENTATION

    print(f"sluice {__version__} (hot path: {IMPLEMENTATION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
