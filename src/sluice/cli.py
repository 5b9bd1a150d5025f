"""The ``sluice`` command: serve, mock-upstream, check-config, routes, db (migrate, version), keys, users, teams,
roles, audit, dlq (in sluice.resilience.dlq_cli), import (sluice.importers), version.

How each command loads its config (what must be set) is sluice.cli_config's; the admin output, sluice.cli_output.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from . import __version__
from .cli_config import ADMIN_NEEDS, config_path, load_for_admin, load_for_description, note_placeholders
from .cli_output import FORMATS, render
from .errors import ConfigError
from .listen import listen_problem

if TYPE_CHECKING:
    from .admin.grants import Actor
    from .admin.manager import Manager
    from .config import Config
    from .store import Store

__all__ = ["main"]

EXIT_CONFIG = 2
EXIT_STORE = 1  # the store could not be reached or failed
EXIT_LISTEN = 1  # the address to serve on is taken (or not this host's)
EXIT_CLOSED_PIPE = 1  # stdout's reader went away (`sluice keys list | head`)
AUTH_OFF = "auth is off: any caller is accepted, with any key or none; see docs/auth.md"
CONFIG_HELP = "the YAML config file (default: $SLUICE_CONFIG)"
STORE_CONFIG_HELP = "the YAML config file: only its store settings are needed (default: $SLUICE_CONFIG)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if "config" in args:
        args.config = config_path(args.config)
        if args.config is None:
            print(f"sluice: {args.command}: no config: give --config FILE or set SLUICE_CONFIG", file=sys.stderr)
            return EXIT_CONFIG
    try:
        result: int = args.run(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        # The reader went away (`sluice keys list | head`): stop quietly, as the Python docs advise (signal
        # module, "Note on SIGPIPE"), with stdout on devnull so the interpreter's last flush fails no more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="A high-throughput LLM/API gateway.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the gateway")
    serve.add_argument("--config", help=CONFIG_HELP)
    serve.add_argument("--host", help="address to bind (default: server.host of the config)")
    serve.add_argument("--port", type=int, help="port to bind (default: server.port of the config)")
    serve.add_argument("--workers", type=int, help="worker processes (default: server.workers of the config)")
    serve.add_argument("--interface", choices=("rsgi", "asgi"), default="rsgi",
                       help="Granian interface: rsgi (native, faster) or asgi")
    serve.set_defaults(run=_serve)

    mock = commands.add_parser("mock-upstream",
                               help="serve a mock LLM provider (OpenAI, Anthropic, Gemini and Azure wire formats)")
    mock.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    mock.add_argument("--port", type=int, default=9000, help="port to bind (default 9000; 0: any free port)")
    mock.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    mock.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    mock.add_argument("--chunk-ms", type=float, default=0.0, help="delay between stream events")
    mock.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests that fail (0..1)")
    mock.add_argument("--error-status", type=int, default=500, help="status of those failures")
    mock.add_argument("--seed", type=int, help="seed for the error and fault draws (reproducible faults)")
    mock.add_argument("--retry-after", type=float, metavar="S",
                      help="Retry-After (seconds) of the error answers (a 429 carries 1 s without it)")
    mock.add_argument("--fault", metavar="KIND", help="break the answers so (see sluice/mock/faults.py): "
                      "hang-after-headers, trickle, invalid-json, close-mid-stream, error-200, reset",
                      choices=("hang-after-headers", "trickle", "invalid-json", "close-mid-stream", "error-200",
                               "reset"))
    mock.add_argument("--fault-rate", type=float, default=1.0, metavar="R",
                      help="fraction of requests --fault hits (0..1)")
    mock.add_argument("--trickle-ms", type=float, default=10.0, metavar="MS",
                      help="delay between the bytes of --fault trickle")
    mock.add_argument("--stream-bytes", type=int, default=0, metavar="N",
                      help="pad each streamed OpenAI chat to at least N bytes (large streams)")
    mock.add_argument("--interface", choices=("rsgi", "asgi"), default="rsgi",
                      help="Granian interface: rsgi, or asgi (whose writes wait for the reader: a gateway that stops "
                           "reading a large stream does not make the mock queue it)")
    mock.set_defaults(run=_mock)

    check = commands.add_parser("check-config", help="validate a config file without serving",
                                description="Validate a config file without serving.  An unset variable that "
                                            "holds a secret is checked with a placeholder, and named on stderr; "
                                            "--strict refuses it, as serve does.")
    check.add_argument("config", nargs="?", help="the YAML config file (default: $SLUICE_CONFIG)")
    check.add_argument("--strict", action="store_true", help="unset secret variables are errors too (as in serve)")
    check.set_defaults(run=_check_config)

    routes = commands.add_parser("routes", help="print each route with its pipeline of stages, in order")
    routes.add_argument("--config", help=CONFIG_HELP)
    routes.set_defaults(run=_routes, strict=False)

    db = commands.add_parser("db", help="the store of keys, users and audit: migrate, version")
    db_actions = db.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    db_migrate = db_actions.add_parser("migrate", help="apply the missing schema migrations")
    db_migrate.add_argument("--config", help=STORE_CONFIG_HELP)
    db_migrate.set_defaults(run=_db_migrate)
    db_version = db_actions.add_parser("version", help="print the store's schema version")
    db_version.add_argument("--config", help=STORE_CONFIG_HELP)
    db_version.set_defaults(run=_db_version)

    _manage_parsers(commands)
    from .resilience.dlq_cli import add_parsers as add_dlq_parsers

    add_dlq_parsers(commands)  # dlq list|show|replay|purge

    imports = commands.add_parser("import", help="turn another gateway's config into a sluice config: litellm")
    sources = imports.add_subparsers(dest="import_source", metavar="SOURCE", required=True)
    litellm = sources.add_parser("litellm", help="a LiteLLM proxy config.yaml (docs/litellm.md)",
                                 description="Write the sluice config for a LiteLLM proxy config.yaml; list on "
                                             "stderr what could not be mapped, each with its LiteLLM path and why.")
    litellm.add_argument("file", help="the LiteLLM config.yaml")
    litellm.add_argument("-o", "--output", metavar="OUT", help="write the sluice config here (default: stdout)")
    litellm.set_defaults(run=_import_litellm)

    version = commands.add_parser("version", help="print the version and the hot path in use")
    version.set_defaults(run=_version)
    return parser


def _load(path: str, *, serving: bool = False) -> Config | None:
    """The config at ``path`` with every variable set, or None after saying what is wrong with it (its provider
    kinds' code included); ``serving``: one that would serve nothing (no models) is wrong too."""
    from .config import check_serves_something, load_config
    from .providers import check_providers  # plugin kinds load here; the config layer knows them by name

    try:
        config = load_config(path)
        if serving:
            check_serves_something(config)
        check_providers(config)
        return config
    except ConfigError as exc:
        print(f"sluice: invalid config: {exc}", file=sys.stderr)
        return None


def _load_to_describe(args: argparse.Namespace, *, serving: bool = False) -> Config | None:
    """The config to check or describe: unset secrets filled with placeholders and named (sluice.cli_config);
    ``serving``: one that would serve nothing (no models) is refused, as `serve` refuses it."""
    from .config import check_serves_something
    from .providers import check_providers

    try:
        config, filled = load_for_description(args.config, strict=args.strict)
        if serving:
            check_serves_something(config)
        check_providers(config)
    except ConfigError as exc:
        print(f"sluice: invalid config: {exc}", file=sys.stderr)
        return None
    note_placeholders(filled)
    return config


def _load_for_admin(path: str) -> Config | None:
    """The config of an admin command: only its store and auth Redis settings need their variables set."""
    try:
        return load_for_admin(path, ADMIN_NEEDS)
    except ConfigError as exc:
        print(f"sluice: invalid config: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    config = _load(args.config, serving=True)
    if config is None:
        return EXIT_CONFIG
    from .runner import serve

    server = config.server
    workers = args.workers or server.workers
    if workers < 1:
        print("sluice: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    host, port = args.host or server.host, server.port if args.port is None else args.port
    if (problem := listen_problem(host, port)) is not None:  # before the store is touched: fail fast
        print(f"sluice: {problem}", file=sys.stderr)
        return EXIT_LISTEN
    entry = "sluice.server.entry:rsgi_app" if args.interface == "rsgi" else "sluice.server.entry:asgi_app"
    from .auth.keys import prepare_store
    from .runner import record_config_load
    from .store import StoreError

    try:
        for version, name in prepare_store(config):  # once, before the workers start
            print(f"sluice: store migrated to version {version} ({name})", file=sys.stderr)
        record_config_load(config, args.config, _cli_actor())  # the audit log's config.load (auth on)
    except StoreError as exc:
        print(f"sluice: the store failed: {exc}", file=sys.stderr)
        return EXIT_STORE
    if not config.auth.enabled:  # the quickstart's case: say so at start (once, not once per worker)
        from .observability.logging import configure_logging

        configure_logging(config.observability.log_level, config.observability.log_format.value)
        logging.getLogger("sluice.server").warning(AUTH_OFF)
    # The workers' metrics snapshots meet here: one directory per `sluice serve`, gone with it.
    metrics_dir = tempfile.mkdtemp(prefix="sluice-metrics-")
    try:
        serve(entry, host=host, port=port, workers=workers, interface=args.interface,
              grace_period_s=server.grace_period_s, server=server,
              env={"SLUICE_CONFIG": os.path.abspath(args.config), "SLUICE_METRICS_DIR": metrics_dir})
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _mock(args: argparse.Namespace) -> int:
    import re

    from .mock.server import parse_options
    from .runner import serve

    fields = ("latency_ms", "chunk_ms", "error_rate", "error_status", "seed", "retry_after", "fault", "fault_rate",
              "trickle_ms", "stream_bytes")
    try:
        options = parse_options({name: getattr(args, name) for name in fields})
    except ValueError as exc:  # "Expected `float` <= 1.0 - at `$.error_rate`": name the flag
        flag = re.sub(r"\$\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), str(exc))
        print(f"sluice: mock-upstream: {flag}", file=sys.stderr)
        return EXIT_CONFIG
    if (problem := listen_problem(args.host, args.port)) is not None:
        print(f"sluice: mock-upstream: {problem}", file=sys.stderr)
        return EXIT_LISTEN
    serve(f"sluice.mock.entry:{args.interface}_app", host=args.host, port=args.port, workers=args.workers,
          interface=args.interface, grace_period_s=5,
          env={"SLUICE_MOCK_OPTIONS": msgspec.json.encode(options).decode()}, log_level="warning")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _load_to_describe(args, serving=True)
    if config is None:
        return EXIT_CONFIG
    print(f"{args.config}: ok ({len(config.providers)} providers, {len(config.models)} models)")
    return 0


def _routes(args: argparse.Namespace) -> int:
    """The pipelines the gateway would build from the config, printed without serving."""
    import asyncio

    config = _load_to_describe(args)
    if config is None:
        return EXIT_CONFIG
    with tempfile.TemporaryDirectory(prefix="sluice-routes-") as metrics_dir:
        os.environ.setdefault("SLUICE_METRICS_DIR", metrics_dir)  # the gateway's metrics files, thrown away

        async def describe() -> list[str]:
            from .server.app import create_gateway

            gateway = create_gateway(config)
            try:
                return gateway.routes.describe()
            finally:
                await gateway.close()

        lines = asyncio.run(describe())
    print("\n".join(lines))
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


def _open_store(config: Config) -> Store | None:
    """The store the config names, or None after saying why it cannot be opened (a missing extra)."""
    from .store import open_store

    try:
        return open_store(config.store)
    except ConfigError as exc:
        print(f"sluice: invalid config: {exc}", file=sys.stderr)
        return None


def _with_store(config_path: str, action: Callable[[Store], Awaitable[None]]) -> int:
    """Runs ``action`` on the store the config names; 1 when the store fails."""
    import asyncio

    from .store import StoreError

    config = _load_for_admin(config_path)
    store = None if config is None else _open_store(config)
    if store is None:
        return EXIT_CONFIG

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


# -- keys, users, teams, roles, audit: on the configured store, each change audited as cli:<os user> -------------

# (flag, field, kind) of each body field: str, list (repeatable flag), bool (--x/--no-x), float, time, json.
_KEY_FIELDS = (("--name", "name", "str"), ("--owner-user", "owner_user", "str"), ("--owner-team", "owner_team", "str"),
               ("--service-account", "service_account", "bool"), ("--role", "roles", "list"),
               ("--model", "models", "list"), ("--ip-allow", "ip_allow", "list"), ("--ip-deny", "ip_deny", "list"),
               ("--signing", "signing", "bool"), ("--expires-at", "expires_at", "time"), ("--ttl-s", "ttl_s", "float"),
               ("--metadata", "metadata", "json"), ("--policies", "policies", "json"), ("--quotas", "quotas", "json"))
_USER_FIELDS = (("--name", "name", "str"), ("--email", "email", "str"), ("--team", "teams", "list"),
                ("--role", "roles", "list"), ("--metadata", "metadata", "json"), ("--disabled", "disabled", "bool"))
_TEAM_FIELDS = (("--name", "name", "str"), ("--role", "roles", "list"), ("--metadata", "metadata", "json"))
_ROLE_FIELDS = (("--permission", "permissions", "list"), ("--description", "description", "str"))
_KINDS = {"keys": ("key", _KEY_FIELDS), "users": ("user", _USER_FIELDS), "teams": ("team", _TEAM_FIELDS),
          "roles": ("role", _ROLE_FIELDS)}


def _manage_parsers(commands: Any) -> None:
    for plural, (singular, fields) in _KINDS.items():
        parser = commands.add_parser(plural, help=f"manage {plural} on the configured store (JSON or a table)")
        actions = parser.add_subparsers(dest=f"{singular}_action", metavar="ACTION", required=True)
        create = _store_action(actions, "create", f"create a {singular}" + (" (the key is printed once)"
                                                                            if plural == "keys" else ""))
        if plural == "roles":
            create.add_argument("name", help="the role's name")
        elif plural != "keys":
            create.add_argument("--id", help=f"the {singular}'s id (default: a new {singular}_… id)")
        _field_flags(create, fields)
        listing = _store_action(actions, "list", f"list {plural}, {singular} id order")
        listing.add_argument("--after", help="the last id of the previous page")
        listing.add_argument("--limit", type=int, default=100, help="at most this many (1..1000)")
        if plural == "keys":
            listing.add_argument("--owner-user", help="only keys of this user")
            listing.add_argument("--owner-team", help="only keys of this team")
            listing.add_argument("--include-revoked", action="store_true", help="revoked keys too")
        elif plural == "users":
            listing.add_argument("--team", help="only members of this team")
        get = _store_action(actions, "get", f"show one {singular}")
        get.add_argument("id", help=f"the {singular}'s id")
        update = _store_action(actions, "update", f"change a {singular}'s fields (lists given replace the old)")
        update.add_argument("id", help=f"the {singular}'s id")
        _field_flags(update, fields)
        if plural == "keys":
            revoke = _store_action(actions, "revoke", "revoke a key now")
            revoke.add_argument("id", help="the key's id")
            revoke.add_argument("--reason", default="", help="kept in the audit record")
            rotate = _store_action(actions, "rotate", "issue a new key (printed once); the old one works for "
                                                      "--grace-s more")
            rotate.add_argument("id", help="the key's id")
            rotate.add_argument("--grace-s", type=float, help="seconds the old key keeps working (default 86400)")
        else:
            delete = _store_action(actions, "delete", f"delete a {singular}")
            delete.add_argument("id", help=f"the {singular}'s id")
        for action in actions.choices.values():
            action.set_defaults(run=_manage, kind=plural)

    audit = commands.add_parser("audit", help="the audit log: list, verify")
    audit_actions = audit.add_subparsers(dest="audit_action", metavar="ACTION", required=True)
    audit_list = _store_action(audit_actions, "list", "list audit records in seq order")
    audit_list.add_argument("--action", dest="action_filter", help="only this action, e.g. key.create")
    audit_list.add_argument("--actor", help="only this actor, e.g. cli:alice or a key id")
    audit_list.add_argument("--target", help="only this target, e.g. a key id")
    audit_list.add_argument("--since", help="epoch seconds or ISO 8601 (from, inclusive)")
    audit_list.add_argument("--until", help="epoch seconds or ISO 8601 (to, exclusive)")
    audit_list.add_argument("--after-seq", type=int, help="the last seq of the previous page")
    audit_list.add_argument("--limit", type=int, default=100, help="at most this many (1..1000)")
    verify = _store_action(audit_actions, "verify", "check the hash chain: exit 0 intact, 1 broken")
    for action in (audit_list, verify):
        action.set_defaults(run=_manage, kind="audit")


def _store_action(actions: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
    parser.add_argument("--config", help=STORE_CONFIG_HELP)
    parser.add_argument("--format", choices=FORMATS, default="json",
                        help="json (the default, for scripts) or table (aligned columns, for people)")
    parser.set_defaults(action=name)
    return parser


def _field_flags(parser: argparse.ArgumentParser, fields: tuple[tuple[str, str, str], ...]) -> None:
    for flag, field, kind in fields:
        if kind == "list":
            parser.add_argument(flag, dest=field, action="append", metavar=field.upper().rstrip("S"),
                                help=f"{field} (repeat the flag; given, it replaces the whole list)")
        elif kind == "bool":
            parser.add_argument(flag, dest=field, action=argparse.BooleanOptionalAction, default=None,
                                help=f"set {field} (or --no-{flag[2:]} to clear it)")
        elif kind == "json":
            parser.add_argument(flag, dest=field, metavar="JSON", help=f"{field} as JSON")
        else:
            parser.add_argument(flag, dest=field, type=float if kind == "float" else str,
                                help=f"{field}: epoch seconds or ISO 8601" if kind == "time" else field)
    parser.add_argument("--json", dest="body_json", metavar="BODY",
                        help="the body as the admin API takes it (a JSON object); the flags override its fields")


def _body(args: argparse.Namespace, fields: tuple[tuple[str, str, str], ...]) -> dict[str, Any]:
    """The request body from --json and the field flags (only those given)."""
    from .admin.bodies import parse_time
    from .errors import InvalidRequest

    body: dict[str, Any] = {}
    if args.body_json is not None:
        loaded = _json_arg("--json", args.body_json)
        if not isinstance(loaded, dict):
            raise InvalidRequest("--json must be a JSON object.", param="json")
        body.update(loaded)
    for _flag, field, kind in fields:
        value = getattr(args, field)
        if value is None:
            continue
        if kind == "json":
            value = _json_arg(f"--{field.replace('_', '-')}", value)
        elif kind == "time":
            value = parse_time(field, value)
        body[field] = value
    return body


def _json_arg(flag: str, text: str) -> Any:
    import json

    from .errors import InvalidRequest

    try:
        return json.loads(text)
    except ValueError:
        raise InvalidRequest(f"{flag} is not valid JSON.", param=flag) from None


def _cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return f"cli:uid-{os.getuid()}"


def _manage(args: argparse.Namespace) -> int:
    """One keys/users/teams/roles/audit action on the configured store; prints its answer as JSON."""
    import asyncio

    from .admin.grants import Actor
    from .admin.manager import Manager
    from .auth.audit import AuditLog
    from .auth.changes import ChangeNotices, auth_redis_url
    from .config.permissions import BUILTIN_ROLES
    from .errors import GatewayError
    from .store import StoreError

    config = _load_for_admin(args.config)
    store = None if config is None else _open_store(config)
    if config is None or store is None:
        return EXIT_CONFIG
    audit = AuditLog(store)
    url = auth_redis_url(config)  # with Redis, each change is announced to the running gateways (pub/sub)
    notices = ChangeNotices(url, config.auth.redis_prefix, timeout_s=config.auth.redis_timeout_s) if url else None
    manager = Manager(store, audit, builtin_roles=set(BUILTIN_ROLES) | set(config.auth.roles),
                      publish=notices.publish if notices is not None else None)
    outcome = {"code": 0}

    async def run() -> None:
        try:
            if config.store.migrate_on_start:
                await store.migrate()
            answer = await _dispatch(manager, args, Actor(_cli_actor()))
            print(render(answer, args.format))
            if args.kind == "audit" and args.action == "verify" and not answer["ok"]:
                print(f"sluice: the audit chain is broken at seq {answer['first_bad_seq']} "
                      f"({answer['checked']} records checked)", file=sys.stderr)
                outcome["code"] = EXIT_STORE
            elif "key" in answer and args.kind == "keys":
                print("sluice: the key above is shown once; store it now.", file=sys.stderr)
        finally:
            await audit.aclose()
            await store.aclose()
            if notices is not None:
                await notices.aclose()
        if audit.failed or audit.dropped:
            print("sluice: the change was made but its audit record could not be written", file=sys.stderr)
            outcome["code"] = EXIT_STORE

    try:
        asyncio.run(run())
    except GatewayError as exc:
        print(f"sluice: {exc.message}", file=sys.stderr)
        return EXIT_STORE
    except StoreError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_STORE
    return outcome["code"]


async def _dispatch(manager: Manager, args: argparse.Namespace, actor: Actor) -> dict[str, Any]:
    from .admin import bodies as m

    kind, action = args.kind, args.action
    if kind == "audit":
        if action == "verify":
            return await manager.verify_audit()
        since, until = (None if t is None else m.parse_time(n, t) for n, t in (("since", args.since),
                                                                                 ("until", args.until)))
        return await manager.list_audit(action=args.action_filter, actor=args.actor, target=args.target,
                                        since=since, until=until, after_seq=args.after_seq, limit=args.limit)
    if action == "revoke":
        return await manager.revoke_key(args.id, m.KeyRevoke(reason=args.reason), actor)
    if action == "rotate":
        return await manager.rotate_key(args.id, m.KeyRotate(grace_s=args.grace_s), actor)
    singular, fields = _KINDS[kind]
    answer: dict[str, Any]
    if action == "list":
        filters = {name: getattr(args, name) for name in ("owner_user", "owner_team", "include_revoked", "team")
                   if hasattr(args, name)}
        answer = await getattr(manager, f"list_{kind}")(after=args.after, limit=args.limit, **filters)
    elif action in ("get", "delete"):
        call = getattr(manager, f"{action}_{singular}")
        answer = await (call(args.id) if action == "get" else call(args.id, actor))
    else:
        body = _body(args, fields)
        shape = getattr(m, f"{singular.capitalize()}{action.capitalize()}")  # KeyCreate, UserUpdate, ...
        if action == "create":
            if kind == "roles":
                body["name"] = args.name
            elif kind != "keys" and args.id is not None:
                body["id"] = args.id
            answer = await getattr(manager, f"create_{singular}")(m.convert_body(body, shape), actor)
        else:
            answer = await getattr(manager, f"update_{singular}")(args.id, m.convert_body(body, shape), actor)
    return answer


def _import_litellm(args: argparse.Namespace) -> int:
    """``sluice import litellm FILE [-o OUT]``: the config out, what could not be mapped on stderr."""
    from pathlib import Path

    from .importers import ImportProblem
    from .importers.litellm import convert_text

    try:
        imported = convert_text(Path(args.file).read_text(encoding="utf-8"))
    except OSError as exc:
        return _import_failed(f"cannot read {args.file!r}: {exc.strerror}")
    except ImportProblem as exc:
        return _import_failed(f"{args.file}: {exc}")
    text = imported.to_yaml(args.file)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            return _import_failed(f"cannot write {args.output!r}: {exc.strerror}")
    if imported.unmapped:
        print(f"sluice: import litellm: {len(imported.unmapped)} not mapped:", file=sys.stderr)
        for item in imported.unmapped:
            print(f"  {item}", file=sys.stderr)
    return 0


def _import_failed(problem: str) -> int:
    print(f"sluice: import litellm: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def _version(args: argparse.Namespace) -> int:
    from ._native import IMPLEMENTATION

    print(f"sluice {__version__} (hot path: {IMPLEMENTATION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
