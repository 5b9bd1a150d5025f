"""The dead-letter queue on its real backends: a SQLite file, a real PostgreSQL and a real Redis stream; the
`sluice dlq` command on each; and replays through a real gateway in front of the mock upstream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sluice.config import StoreConfig, load_config
from sluice.errors import LetterNotFound
from sluice.resilience import Attempt, DeadLetter, DeadLetters, Failure, letter_for, open_dead_letters
from sluice.resilience.dead_letters import DeadLettersUnavailable, StoreBackend
from sluice.state.dead_letters_redis import RedisBackend
from sluice.state.redis import connect
from sluice.store import open_store
from tests.conftest import Proc, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = "sk-live-0123456789abcdefghijklmnop"
EMAIL = "someone@example.org"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi, I am {EMAIL}, key {SECRET}"}]}
REPLAY_KEY = "sk-dlq-replayer-0123456789abcdef"


def run(body: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await body()

    return asyncio.run(bounded())


def letter(n: int, *, at: float | None = None, model: str = "gpt-4o-mini", body: dict[str, Any] | None = None,
           max_body_bytes: int = 65536, route: str = "/v1/chat/completions") -> DeadLetter:
    return letter_for(f"req-{n}", route, model, "mock", 503, "BadGateway: upstream answered 503",
                      [Attempt(deployment="mock/gpt-4o-mini", status=503, duration_ms=1.5)],
                      json.dumps(body or {**CHAT, "model": model, "n": n}).encode(), "key_00000000000000aa",
                      max_body_bytes, key_prefix="sk-sl-abcd…", content_type="application/json",
                      at=time.time() if at is None else at)


@dataclass
class Place:
    """Where letters go in one test: ``open`` gives a DeadLetters on it (migrated, owning its connection)."""

    kind: str
    open: Callable[..., Awaitable[DeadLetters]]


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    if request.param == "redis":
        server, prefix = request.getfixturevalue("redis_server"), request.getfixturevalue("prefix")

        async def open_redis(**options: Any) -> DeadLetters:
            backend = RedisBackend(connect(server.url, timeout_s=5.0, name="dlq"),
                                   prefix=prefix, timeout_s=5.0, owns_client=True)
            await backend.trim(max_entries=0, before=None)  # a rerun's leftovers on the shared server
            return DeadLetters(backend, **options)

        yield Place("redis", open_redis)
        return
    name = None
    if request.param == "sqlite":
        config = StoreConfig(sqlite_path=str(tmp_path / "store.db"), timeout_s=10.0)
    else:
        server = request.getfixturevalue("postgres")
        name, url = server.create_database()
        config = StoreConfig(postgres_url=url, timeout_s=10.0)

    async def open_in_store(**options: Any) -> DeadLetters:
        store = open_store(config)
        await store.migrate()
        return DeadLetters(StoreBackend(store, owns_store=True), **options)

    try:
        yield Place(request.param, open_in_store)
    finally:
        if name is not None:
            server.drop_database(name)


# -- the queue on each backend ----------------------------------------------------------------------------------


def test_record_list_show_and_purge(place: Place) -> None:
    async def body() -> None:
        letters = await place.open()
        try:
            for n in range(3):
                letters.record(Failure(f"req-{n}", "/v1/chat/completions", "gpt-4o-mini" if n != 1 else "gpt-4o",
                                       "mock", 502, ConnectionError(f"refused, key {SECRET}"),
                                       [{"deployment": "mock/gpt-4o-mini", "error": "ConnectError"}],
                                       json.dumps({**CHAT, "n": n}).encode(), key_id="key_0000000000000001",
                                       key_prefix="sk-sl-abcd…", content_type="application/json"))
            assert await letters.flush(30)
            assert letters.written == 3 and letters.dropped == 0 and letters.failed == 0
            listed = await letters.list()
            assert [x.request_id for x in listed] == ["req-2", "req-1", "req-0"]  # newest first
            assert await letters.count() == 3
            first = listed[-1]
            assert first.model == "gpt-4o-mini" and first.status == 502 and first.provider == "mock"
            assert first.attempts == (Attempt(deployment="mock/gpt-4o-mini", error="ConnectError"),)
            assert first.key_id == "key_0000000000000001" and first.key_prefix == "sk-sl-abcd…"
            assert first.content_type == "application/json" and not first.clipped and first.replays == 0
            assert SECRET not in first.body and EMAIL not in first.body and SECRET not in first.error
            assert json.loads(first.body)["n"] == 0 and first.error.startswith("ConnectionError: refused")
            assert await letters.get(first.id) == first
            assert [x.request_id for x in await letters.list(model="gpt-4o")] == ["req-1"]
            assert await letters.list(route="/v1/embeddings") == []
            page = await letters.list(1)
            assert [x.request_id for x in await letters.list(5, before=page[0].id)] == ["req-1", "req-0"]
            with pytest.raises(LetterNotFound):
                await letters.get("999999" if place.kind != "redis" else "1-999")
            with pytest.raises(LetterNotFound):
                await letters.get("not-an-id")
            with pytest.raises(ValueError):
                await letters.list(before="not-an-id")
            assert await letters.purge(ids=[first.id, first.id, "424242"]) == 1
            assert [x.request_id for x in await letters.list()] == ["req-2", "req-1"]
            assert await letters.purge(everything=True) == 2
            assert await letters.list() == [] and await letters.count() == 0
        finally:
            await letters.aclose()

    run(body)


def test_retention_by_count_keeps_the_newest(place: Place) -> None:
    async def body() -> None:
        letters = await place.open(max_entries=3)
        try:
            now = time.time()
            for n in range(5):
                letters.record(letter(n, at=now - 50 + n))
            assert await letters.flush(30)
            assert await letters.trim(now) >= 2  # Redis may have trimmed some already (MAXLEN ~ on add)
            assert [x.request_id for x in await letters.list()] == ["req-4", "req-3", "req-2"]
            assert await letters.count() == 3
        finally:
            await letters.aclose()

    run(body)


def test_retention_by_age_with_a_given_now(place: Place) -> None:
    async def body() -> None:
        letters = await place.open(max_age_s=100.0)
        try:
            now = time.time()
            for n, age in enumerate((1000, 500, 10)):  # oldest first, as they would arrive
                letters.record(letter(n, at=now - age))
            assert await letters.flush(30)
            assert await letters.trim(now) == 2
            assert [x.request_id for x in await letters.list()] == ["req-2"]
            assert await letters.trim(now) == 0
            assert await letters.trim(now + 1000) == 1  # later, the last one ages out too
            assert await letters.count() == 0
            later = now + 2000  # newer than every letter so far (a Redis stream's ids only grow)
            letters.record(letter(3, at=later - 50))
            letters.record(letter(4, at=later))
            assert await letters.flush(30)
            assert await letters.purge(older_than_s=20, now=later) == 1
            assert [x.request_id for x in await letters.list()] == ["req-4"]
        finally:
            await letters.aclose()

    run(body)


def test_a_full_queue_drops_and_counts(place: Place) -> None:
    async def body() -> None:
        letters = await place.open(queue_size=4, batch_size=3)
        try:
            for n in range(10):
                letters.record(letter(n))
            assert letters.dropped == 6 and letters.pending == 4
            assert await letters.flush(30)
            assert letters.written == 4 and await letters.count() == 4
        finally:
            await letters.aclose()

    run(body)


def test_bodies_are_redacted_and_clipped(place: Place) -> None:
    async def body() -> None:
        letters = await place.open(max_body_bytes=80)
        try:
            long = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{SECRET} " + "x" * 500}]}
            letters.record(Failure("req-long", "/v1/chat/completions", "gpt-4o-mini", None, 500, "boom",
                                   body=json.dumps(long).encode()))
            letters.record(Failure("req-short", "/v1/chat/completions", "gpt-4o-mini", None, 500, "boom",
                                   body=b'{"a": "' + EMAIL.encode() + b'", "nul": "\x00"}'))
            assert await letters.flush(30)
            short, clipped = await letters.list()
            assert clipped.clipped and len(clipped.body.encode()) <= 80 and SECRET not in clipped.body
            assert clipped.body.startswith('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[sec')
            assert not short.clipped and EMAIL not in short.body and "[email]" in short.body
            assert short.body.endswith('"nul": "\ufffd"}')
        finally:
            await letters.aclose()

    run(body)


def test_a_failed_replay_is_counted_in_the_letter(place: Place) -> None:
    async def body() -> None:
        letters = await place.open()
        try:
            letters.record(letter(1))
            letters.record(letter(2))
            assert await letters.flush(30)
            second, first = await letters.list()
            attempt = Attempt(deployment="replay", status=500, at=123.0, duration_ms=4.0)
            noted = await letters.note_replay(first.id, attempt)
            assert noted.replays == 1 and noted.attempts[-1] == attempt
            again = await letters.note_replay(first.id, attempt)
            assert again.replays == 2 and len(again.attempts) == 3
            assert await letters.get(first.id) == again
            assert [x.replays for x in await letters.list()] == [0, 2]
            with pytest.raises(LetterNotFound):
                await letters.note_replay("31337" if place.kind != "redis" else "1-31337", attempt)
            assert await letters.delete([first.id]) == [first.id]
            assert await letters.list() == [second]
            if place.kind == "redis":  # the replay counts of removed entries go too
                backend = letters.backend
                assert isinstance(backend, RedisBackend)
                assert await backend.client.hlen(backend.replays_key) == 0
        finally:
            await letters.aclose()

    run(body)


def test_redis_down_then_back(redis: Any) -> None:
    """Redis stops: letters wait in the queue (bounded); it comes back: they are written."""

    async def body() -> None:
        letters = DeadLetters(RedisBackend(connect(redis.url, timeout_s=1.0, name="dlq"),
                                           timeout_s=1.0, owns_client=True),
                              close_timeout_s=2.0)
        try:
            redis.stop()
            letters.record(letter(1))
            assert not await letters.flush(1.5)
            assert letters.pending == 1 and letters.written == 0
            with pytest.raises(DeadLettersUnavailable):
                await letters.list()
            await asyncio.to_thread(redis.start)
            assert await letters.flush(30)
            assert [x.request_id for x in await letters.list()] == ["req-1"]
        finally:
            await letters.aclose()

    run(body)


# -- sluice dlq ----------------------------------------------------------------------------------------------


def sluice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "sluice", *args], capture_output=True, text=True, timeout=60,
                          env=env if env is not None else dict(os.environ))
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def cli_config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A config file naming where the letters are: the store (SQLite, PostgreSQL) or a Redis of the test's own."""
    path = tmp_path / "sluice.yaml"
    name = None
    if request.param == "sqlite":
        path.write_text(f"store: {{sqlite_path: {json.dumps(str(tmp_path / 'store.db'))}}}\n")
    elif request.param == "postgres":
        server = request.getfixturevalue("postgres")
        name, url = server.create_database()
        path.write_text(f"store: {{postgres_url: {json.dumps(url)}, timeout_s: 10}}\n")
    else:
        redis = request.getfixturevalue("redis")
        path.write_text(f"resilience: {{redis: {json.dumps(redis.url)}, "
                        "dead_letters: {enabled: true, redis: true}}\n")
    try:
        yield path
    finally:
        if name is not None:
            server.drop_database(name)


def seed(path: Path, *made: DeadLetter) -> list[str]:
    """Writes letters where the config says, as the gateway would; answers their ids, oldest first."""

    async def body() -> list[str]:
        letters = open_dead_letters(load_config(str(path)))
        try:
            if isinstance(letters.backend, StoreBackend):
                await letters.backend.store.migrate()
            for one in made:
                letters.record(one)
            assert await letters.flush(30)
            return [x.id for x in await letters.list(1000)][::-1]
        finally:
            await letters.aclose()

    ids: list[str] = run(body)
    return ids


def test_dlq_list_show_purge(cli_config: Path) -> None:
    config = str(cli_config)
    empty = sluice("dlq", "list", "--config", config)
    assert empty.returncode == 0 and empty.stdout.strip() == "no dead letters", empty.stderr
    ids = seed(cli_config, letter(1), letter(2, model="gpt-4o"), letter(3))
    table = sluice("dlq", "list", "--config", config)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "AT", "(UTC)"] and [line.split()[0] for line in lines[1:]] == ids[::-1]
    assert "BadGateway: upstream answered 503" in lines[1] and SECRET not in table.stdout
    listed = json.loads(sluice("dlq", "list", "--config", config, "--json", "--model", "gpt-4o").stdout)
    assert [x["id"] for x in listed["data"]] == [ids[1]] and listed["next_before"] is None
    page = json.loads(sluice("dlq", "list", "--config", config, "--json", "--limit", "2").stdout)
    assert [x["id"] for x in page["data"]] == [ids[2], ids[1]] and page["next_before"] == ids[1]
    rest = json.loads(sluice("dlq", "list", "--config", config, "--json", "--before", ids[1]).stdout)
    assert [x["id"] for x in rest["data"]] == [ids[0]]
    shown = sluice("dlq", "show", "--config", config, ids[0])
    assert shown.returncode == 0, shown.stderr
    one = json.loads(shown.stdout)
    assert one["id"] == ids[0] and one["request_id"] == "req-1" and one["key_prefix"] == "sk-sl-abcd…"
    assert json.loads(one["body"])["n"] == 1 and SECRET not in one["body"]

    purged = sluice("dlq", "purge", "--config", config, ids[0], "12345" if "-" not in ids[0] else "1-12345")
    assert purged.returncode == 1 and purged.stdout.strip() == "removed 1 dead letter"
    assert "no dead letter '" in purged.stderr
    gone = sluice("dlq", "show", "--config", config, ids[0])
    assert gone.returncode == 1 and f"no dead letter '{ids[0]}'" in gone.stderr
    old = sluice("dlq", "purge", "--config", config, "--older-than", "3600")
    assert old.returncode == 0 and old.stdout.strip() == "removed 0 dead letters", old.stderr
    everything = sluice("dlq", "purge", "--config", config, "--all")
    assert everything.returncode == 0 and everything.stdout.strip() == "removed 2 dead letters"
    assert sluice("dlq", "list", "--config", config).stdout.strip() == "no dead letters"


def test_dlq_bad_input_gets_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text(f"store: {{sqlite_path: {json.dumps(str(tmp_path / 'store.db'))}}}\n")
    path = str(config)
    cases = [
        (("dlq", "purge", "--config", path), 2, "name what to remove"),
        (("dlq", "purge", "--config", path, "--all", "7"), 2, "name what to remove"),
        (("dlq", "purge", "--config", path, "--older-than", "-1"), 2, "--older-than must be"),
        (("dlq", "purge", "--config", path, "--older-than", "nan"), 2, "--older-than must be"),
        (("dlq", "purge", "--config", path, "--older-than", "soon"), 2, "invalid float value"),
        (("dlq", "replay", "--config", path), 2, "name the letters to replay"),
        (("dlq", "replay", "--config", path, "--all", "7"), 2, "name the letters to replay"),
        (("dlq", "replay", "--config", path, "7", "--gateway", "localhost:8080"), 2, "--gateway must be"),
        (("dlq", "replay", "--config", path, "7", "--timeout", "0"), 2, "--timeout must be"),
        (("dlq", "list", "--config", path, "--limit", "0"), 2, "--limit must be between 1 and 1000"),
        (("dlq", "list", "--config", path, "--before", "x-y"), 2, "not a dead-letter id"),
        (("dlq", "list", "--config", path, "--bogus"), 2, "unrecognized arguments: --bogus"),
        (("dlq", "show", "--config", path, "12"), 1, "no dead letter '12'"),
        (("dlq", "show", "--config", path, "../etc"), 1, "no dead letter '../etc'"),
        (("dlq", "frobnicate", "--config", path), 2, "invalid choice: 'frobnicate'"),
        (("dlq", "list"), 2, "no config: give --config FILE or set SLUICE_CONFIG"),
        (("dlq", "list", "--config", str(tmp_path / "missing.yaml")), 2, "invalid config"),
    ]
    for args, code, message in cases:
        done = sluice(*args)
        assert done.returncode == code and message in done.stderr, (args, done.returncode, done.stderr)
    replayed = sluice("dlq", "replay", "--config", path, "12", "--gateway", f"http://127.0.0.1:{free_port()}")
    assert replayed.returncode == 1 and "12  not found" in replayed.stdout, replayed.stdout + replayed.stderr


def test_dlq_says_when_its_backend_is_unreachable(tmp_path: Path) -> None:
    config = tmp_path / "sluice.yaml"
    for text in (f"store: {{postgres_url: 'postgresql://127.0.0.1:{free_port()}/x', timeout_s: 0.5}}\n",
                 f"resilience: {{redis: 'redis://127.0.0.1:{free_port()}/0', dead_letters: {{redis: true}}}}\n"):
        config.write_text(text)
        done = sluice("dlq", "list", "--config", str(config))
        assert done.returncode == 1 and done.stderr.startswith("sluice: "), done.stderr
    config.write_text("resilience: {dead_letters: {redis: true}}\n")
    done = sluice("dlq", "list", "--config", str(config))
    assert done.returncode == 2 and "needs resilience.redis or ratelimit.redis" in done.stderr


# -- replay through a real gateway -----------------------------------------------------------------------------


def gateway_config(tmp_path: Path, port: int, mock_url: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"""
server: {{host: 127.0.0.1, port: {port}, grace_period_s: 5}}
store: {{sqlite_path: {json.dumps(str(tmp_path / 'sluice.db'))}}}
auth:
  enabled: true
  static_keys:
    - {{name: replayer, key: {REPLAY_KEY}, roles: [user]}}
providers:
  mock: {{kind: openai, base_url: {mock_url}, api_keys: [sk-upstream-1]}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  broken-500: {{targets: [{{provider: mock, model: mock-status-500}}]}}
resilience:
  dead_letters: {{enabled: true}}
""")
    return path


def test_replay_through_a_gateway(tmp_path: Path, mock_upstream: Proc) -> None:
    port = free_port()
    config = gateway_config(tmp_path, port, mock_upstream.url)
    path = str(config)
    # Bodies without secrets or personal data: a redacted body is not the client's, and is never replayed.
    plain = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    ok, broken, clipped, no_key = seed(config, letter(1, body=plain),
                                       letter(2, model="broken-500", body={**plain, "model": "broken-500"}),
                                       letter(3, max_body_bytes=20, body=plain), letter(4, body=plain))
    gateway = Proc(["serve", "--config", path, "--port", str(port)], port, tmp_path / "gateway.log")
    try:
        without_key = {k: v for k, v in os.environ.items() if k != "SLUICE_API_KEY"}
        refused = sluice("dlq", "replay", "--config", path, no_key, env=without_key)
        assert refused.returncode == 1 and f"{no_key}  401: failed again, kept (replays: 1)" in refused.stdout

        # The default gateway is the config's server.host:server.port; the key comes from $SLUICE_API_KEY.
        replayed = sluice("dlq", "replay", "--config", path, ok, broken, clipped, no_key,
                          env={**without_key, "SLUICE_API_KEY": REPLAY_KEY})
        lines = replayed.stdout.splitlines()
        assert replayed.returncode == 1, replayed.stdout + replayed.stderr
        assert lines[0] == f"{ok}  200: succeeded, removed"
        assert lines[1] == f"{broken}  500: failed again, kept (replays: 1)"
        assert lines[2].startswith(f"{clipped}  refused: its body was clipped")
        assert lines[3] == f"{no_key}  200: succeeded, removed"
        assert "replayed 2 of 4" in replayed.stderr

        kept = json.loads(sluice("dlq", "list", "--config", path, "--json").stdout)["data"]
        assert [x["id"] for x in kept] == [clipped, broken]
        assert kept[0]["replays"] == 0 and kept[1]["replays"] == 1
        assert kept[1]["attempts"][-1]["deployment"] == "replay" and kept[1]["attempts"][-1]["status"] == 500

        purged = sluice("dlq", "purge", "--config", path, clipped)
        assert purged.returncode == 0
        [fixed] = seed(config, letter(5, body=plain))[-1:]
        everything = sluice("dlq", "replay", "--config", path, "--all", "--key", REPLAY_KEY,
                            "--gateway", gateway.url)
        assert everything.returncode == 1
        assert everything.stdout.splitlines() == [f"{broken}  500: failed again, kept (replays: 2)",
                                                  f"{fixed}  200: succeeded, removed"]
        [redacted] = seed(config, letter(6))[-1:]  # CHAT holds a key and an email address: both redacted
        refused_redacted = sluice("dlq", "replay", "--config", path, redacted, "--key", REPLAY_KEY,
                                  "--gateway", gateway.url)
        assert refused_redacted.returncode == 1
        assert refused_redacted.stdout.startswith(f"{redacted}  refused: its body was redacted")
        assert sluice("dlq", "purge", "--config", path, redacted).returncode == 0
    finally:
        gateway.stop()
    unreachable = sluice("dlq", "replay", "--config", path, broken, "--key", REPLAY_KEY)  # the gateway is gone
    assert unreachable.returncode == 1 and f"{broken}  Connect" in unreachable.stdout, unreachable.stdout
    assert "kept (replays: 3)" in unreachable.stdout
    assert [x["id"] for x in json.loads(sluice("dlq", "list", "--config", path, "--json").stdout)["data"]] == [broken]
