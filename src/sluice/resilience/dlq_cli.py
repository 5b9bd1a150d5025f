"""``sluice dlq list|show|replay|purge``: the dead letters of the configured store or Redis stream.

Exit codes: 0 done; 1 a letter was not found, a replay did not succeed, or the
store / Redis failed; 2 bad usage or config (argparse's own errors too).
Nothing here prints a traceback for bad input.

A replay sends the letter's method, body and content-type to its route on a
running gateway (``--gateway``, default ``http://<server.host>:<server.port>``)
with ``--key`` (else ``$SLUICE_API_KEY``) as a bearer token, plus
``x-sluice-dlq-replay: <id>`` so the gateway may tell a replay apart.  A 2xx
answer (its body read whole) removes the letter; anything else keeps it and
counts the replay in it (``replays``, and one more ``Attempt`` named
``replay``).  A letter whose body was clipped is refused: what is kept is not
what the client sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..cli_output import table
from ..observability.redact import MARKS

if TYPE_CHECKING:
    from ..config import Config
    from ..upstream import UpstreamClient
    from .dead_letters import DeadLetter, DeadLetters

__all__ = ["add_parsers", "replay_letter"]

EXIT_FAILED = 1
EXIT_USAGE = 2
MAX_REPLAY_RESPONSE = 64 * 1024 * 1024  # bytes of a replay's answer read (and thrown away)
_LIST_PAGE = 1000


def add_parsers(commands: Any) -> None:
    """Adds ``dlq`` and its actions to the ``sluice`` command's subparsers."""
    dlq = commands.add_parser("dlq", help="the dead-letter queue: list, show, replay, purge")
    actions = dlq.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)

    listing = _action(actions, "list", "list dead letters, newest first")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (1..1000, default 50)")
    listing.add_argument("--model", help="only letters for this model")
    listing.add_argument("--route", help="only letters for this route, e.g. /v1/chat/completions")
    listing.add_argument("--before", metavar="ID", help="the last id of the previous page")
    listing.add_argument("--json", action="store_true", help="JSON out, bodies included")

    show = _action(actions, "show", "show one dead letter (JSON, body included)")
    show.add_argument("id", help="the letter's id")

    replay = _action(actions, "replay", "send letters again to a running gateway; a success removes the letter")
    replay.add_argument("ids", nargs="*", metavar="ID", help="the letters to replay (or --all)")
    replay.add_argument("--all", action="store_true", help="every letter, oldest first")
    replay.add_argument("--gateway", metavar="URL", help="default: http://<server.host>:<server.port> of the config")
    replay.add_argument("--key", help="the API key to call with (default: $SLUICE_API_KEY)")
    replay.add_argument("--timeout", type=float, default=120.0, help="seconds per replayed request (default 120)")

    purge = _action(actions, "purge", "remove letters: --all, --older-than SECONDS, or IDs")
    purge.add_argument("ids", nargs="*", metavar="ID", help="the letters to remove")
    purge.add_argument("--all", action="store_true", help="every letter")
    purge.add_argument("--older-than", type=float, metavar="SECONDS", help="letters older than this")


def _action(actions: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
    parser.add_argument("--config", help="the YAML config file: only its store, resilience and server settings "
                                          "are needed (default: $SLUICE_CONFIG)")
    parser.set_defaults(run=run, dlq_action=name)
    return parser


def run(args: argparse.Namespace) -> int:
    """One ``sluice dlq`` action; its exit code."""
    problem = _usage_problem(args)
    if problem is not None:
        return _fail(f"dlq {args.dlq_action}: {problem}", EXIT_USAGE)
    from ..cli_config import DLQ_NEEDS, load_for_admin
    from ..errors import ConfigError

    try:
        config = load_for_admin(args.config, DLQ_NEEDS)  # unset variables elsewhere do not matter here
    except ConfigError as exc:
        return _fail(f"invalid config: {exc}", EXIT_USAGE)
    action = _ACTIONS[args.dlq_action]
    return _with_letters(config, lambda letters: action(letters, config, args))


def _usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, before anything connects."""
    if args.dlq_action == "list" and not 1 <= args.limit <= 1000:
        return f"--limit must be between 1 and 1000, got {args.limit}"
    if args.dlq_action == "replay":
        if bool(args.ids) == args.all:
            return "name the letters to replay: IDs or --all (not both)"
        if not math.isfinite(args.timeout) or args.timeout <= 0:
            return "--timeout must be a positive number of seconds"
        if args.gateway is not None and not args.gateway.startswith(("http://", "https://")):
            return f"--gateway must be an http:// or https:// URL, got {args.gateway!r}"
    if args.dlq_action == "purge":
        given = bool(args.ids) + args.all + (args.older_than is not None)
        if given != 1:
            return "name what to remove: --all, --older-than SECONDS or IDs (one of them)"
        if args.older_than is not None and (not math.isfinite(args.older_than) or args.older_than < 0):
            return "--older-than must be a number of seconds, at least 0"
    return None


def _with_letters(config: Config, action: Callable[[DeadLetters], Awaitable[int]]) -> int:
    from ..errors import ConfigError, DeadLetterError
    from .dead_letters import StoreBackend, open_dead_letters

    try:
        letters = open_dead_letters(config)
    except ConfigError as exc:
        return _fail(f"invalid config: {exc}", EXIT_USAGE)

    async def main() -> int:
        try:
            if isinstance(letters.backend, StoreBackend) and config.store.migrate_on_start:
                await _migrate(letters.backend)
            return await action(letters)
        finally:
            await letters.aclose()

    try:
        return asyncio.run(main())
    except DeadLetterError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except ValueError as exc:  # a bad --before id, say
        return _fail(str(exc), EXIT_USAGE)


async def _migrate(backend: Any) -> None:
    from ..errors import DeadLettersUnavailable
    from ..store import StoreError

    try:
        await backend.store.migrate()
    except StoreError as exc:
        raise DeadLettersUnavailable(str(exc)) from exc


def _fail(message: str, code: int) -> int:
    print(f"sluice: {message}", file=sys.stderr)
    return code


# -- the actions --------------------------------------------------------------------------------------------


async def _list(letters: DeadLetters, config: Config, args: argparse.Namespace) -> int:
    found = await letters.list(args.limit, before=args.before, route=args.route, model=args.model)
    if args.json:
        _print_json({"data": [_builtins(letter) for letter in found],
                     "next_before": found[-1].id if len(found) == args.limit else None})
        return 0
    if not found:
        print("no dead letters")
        return 0
    header = ("ID", "AT (UTC)", "STATUS", "MODEL", "ROUTE", "TRIES", "REPLAYS", "ERROR")
    print(table(header, [(letter.id, _when(letter.at), str(letter.status), letter.model or "-", letter.route,
                          str(len(letter.attempts)), str(letter.replays), _cut(letter.error, 60))
                         for letter in found]))
    if len(found) == args.limit:
        print(f"(more may follow: --before {found[-1].id})", file=sys.stderr)
    return 0


async def _show(letters: DeadLetters, config: Config, args: argparse.Namespace) -> int:
    _print_json(_builtins(await letters.get(args.id)))
    return 0


async def _purge(letters: DeadLetters, config: Config, args: argparse.Namespace) -> int:
    if args.ids:
        removed = await letters.delete(args.ids)
        missing = [i for i in dict.fromkeys(args.ids) if i not in removed]
        print(f"removed {len(removed)} dead letter{'s' if len(removed) != 1 else ''}")
        for letter_id in missing:
            print(f"sluice: no dead letter {letter_id!r}", file=sys.stderr)
        return EXIT_FAILED if missing else 0
    count = await letters.purge(everything=args.all, older_than_s=args.older_than)
    print(f"removed {count} dead letter{'s' if count != 1 else ''}")
    return 0


async def _replay(letters: DeadLetters, config: Config, args: argparse.Namespace) -> int:
    from ..upstream import UpstreamClient

    gateway = args.gateway or _default_gateway(config)
    key = args.key if args.key is not None else os.environ.get("SLUICE_API_KEY")
    ids = await _all_ids(letters) if args.all else list(dict.fromkeys(args.ids))
    if not ids:
        print("no dead letters")
        return 0
    client = UpstreamClient(connect_timeout=min(args.timeout, 10.0), read_timeout=args.timeout,
                            total_timeout=args.timeout, max_connections=4, max_connections_per_origin=4)
    failures = 0
    try:
        for letter_id in ids:
            ok, line = await _replay_one(letters, client, gateway, key, letter_id)
            print(f"{letter_id}  {line}")
            failures += not ok
    finally:
        await client.close()
    total = len(ids)
    print(f"replayed {total - failures} of {total}", file=sys.stderr)
    return EXIT_FAILED if failures else 0


async def _replay_one(letters: DeadLetters, client: UpstreamClient, gateway: str, key: str | None,
                      letter_id: str) -> tuple[bool, str]:
    from ..errors import LetterNotFound
    from .dead_letters import Attempt

    try:
        letter = await letters.get(letter_id)
    except LetterNotFound:
        return False, "not found"
    if letter.clipped:
        return False, "refused: its body was clipped when recorded (it is not what the client sent); kept"
    if MARKS.search(letter.body):
        return False, ("refused: its body was redacted when recorded (secrets or personal data replaced: it is not "
                       "what the client sent); kept")
    started = time.time()
    status, error = await replay_letter(client, gateway, letter, key)
    if status is not None and 200 <= status < 300:
        await letters.delete([letter.id])
        return True, f"{status}: succeeded, removed"
    attempt = Attempt(deployment="replay", status=status, error=error, at=started,
                      duration_ms=round((time.time() - started) * 1000, 3))
    try:
        noted = await letters.note_replay(letter.id, attempt)
    except LetterNotFound:  # purged meanwhile
        return False, f"{status or error}: failed again; the letter is gone"
    return False, f"{status or error}: failed again, kept (replays: {noted.replays})"


async def replay_letter(client: UpstreamClient, gateway: str, letter: DeadLetter,
                        key: str | None) -> tuple[int | None, str | None]:
    """Sends ``letter`` to ``gateway`` once with ``client`` (an ``UpstreamClient``); answers (status, None), or
    (None, the error's class and message) when no answer came."""
    from ..upstream import UpstreamError, parse_base_url

    origin, base = parse_base_url(gateway)
    headers = [("x-sluice-dlq-replay", letter.id)]
    if letter.content_type:
        headers.append(("content-type", letter.content_type))
    if key:
        headers.append(("authorization", f"Bearer {key}"))
    body = letter.body.encode() if letter.body or letter.method not in ("GET", "HEAD") else None
    try:
        response = await client.request(origin, letter.method, base + letter.route, headers, body)
        await response.read(MAX_REPLAY_RESPONSE)  # a stream too: success is an answer read to its end
    except (UpstreamError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return int(response.status), None


async def _all_ids(letters: DeadLetters) -> list[str]:
    """Every letter's id, oldest first (the list is newest first, paged)."""
    ids: list[str] = []
    before = None
    while True:
        page = await letters.list(_LIST_PAGE, before=before)
        ids += [letter.id for letter in page]
        if len(page) < _LIST_PAGE:
            return ids[::-1]
        before = page[-1].id


def _default_gateway(config: Config) -> str:
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening everywhere: call it here
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{config.server.port}"


_Action = Callable[["DeadLetters", "Config", argparse.Namespace], Awaitable[int]]
_ACTIONS: dict[str, _Action] = {"list": _list, "show": _show, "purge": _purge, "replay": _replay}


def _builtins(letter: DeadLetter) -> Any:
    import msgspec

    return msgspec.to_builtins(letter)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
