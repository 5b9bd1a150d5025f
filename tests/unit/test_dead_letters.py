"""Dead letters without a backend: building a letter (redaction, clipping, no credential kept) and the queue's
bounds, on the real SQLite store backend, which records the batches the writer hands it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from sluice.errors import DeadLettersUnavailable
from sluice.resilience import Attempt, DeadLetter, DeadLetters, Failure, letter_for
from sluice.resilience.dead_letters import MAX_ATTEMPTS, StoreBackend, describe_error, redact_body
from sluice.store import SqliteStore

SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
EMAIL = "jane.doe@example.com"


def run(body: Callable[[RecordingBackend], Awaitable[None]], tmp_path: Path) -> None:
    """Runs ``body`` (bounded) with a RecordingBackend on a fresh SQLite store in ``tmp_path``."""

    async def bounded() -> None:
        store = SqliteStore(str(tmp_path / "store.db"), timeout_s=10.0)
        await store.migrate()
        try:
            async with asyncio.timeout(30):
                await body(RecordingBackend(store))
        finally:
            await store.aclose()

    asyncio.run(bounded())


class RecordingBackend(StoreBackend):
    """The real store backend (SQLite) that also records the size of each batch the writer hands it; ``down``
    makes every write fail as an unreachable store would (a thin wrapper: down and back on cue)."""

    def __init__(self, store: SqliteStore) -> None:
        super().__init__(store)
        self.batches: list[int] = []
        self.down = False

    async def add(self, letters: Sequence[DeadLetter], max_entries: int) -> list[str]:
        if self.down:
            raise DeadLettersUnavailable("down")
        ids = await super().add(letters, max_entries)
        self.batches.append(len(letters))
        return ids

    async def letters(self) -> list[DeadLetter]:
        """What the store holds, oldest first."""
        return list(reversed(await self.store.list_dead_letters(limit=1000)))


def failure(n: int = 0, body: bytes | str = b'{"model": "gpt-4o-mini"}', **fields) -> Failure:  # type: ignore[no-untyped-def]
    return Failure(**{"request_id": f"req-{n}", "route": "/v1/chat/completions", "model": "gpt-4o-mini",
                      "provider": "openai", "status": 503, "error": "upstream answered 503", "body": body,
                      **fields})


def test_a_letter_keeps_no_secret_or_personal_data() -> None:
    body = f'{{"model": "gpt-4o-mini", "api_key": "hunter2", "messages": [{{"role": "user", "content": ' \
           f'"my key is {SECRET} and my mail {EMAIL}"}}]}}'.encode()
    letter = letter_for("req-1", "/v1beta/models/gemini-pro:generateContent?key=AIzaSecret123&alt=sse", "gpt-4o-mini",
                        "openai", 502, ConnectionError(f"refused at https://x/?token={SECRET}"),
                        [{"deployment": "openai/gpt-4o-mini", "error": "ConnectError", "duration_ms": 3.5}], body,
                        "key_0123456789abcdef", 65536, key_prefix="sk-sl-abcdefghijklmnopqrstuvwxyz",
                        content_type="application/json", at=1000.0)
    assert SECRET not in letter.body and EMAIL not in letter.body and "hunter2" not in letter.body
    assert "[secret]" in letter.body and "[email]" in letter.body and '"model": "gpt-4o-mini"' in letter.body
    assert not letter.clipped
    assert letter.route == "/v1beta/models/gemini-pro:generateContent?alt=sse"  # the credential parameter gone
    assert letter.error.startswith("ConnectionError: refused") and SECRET not in letter.error
    assert letter.key_prefix == "sk-sl-abcd…"  # a whole key given by mistake is cut to its display prefix
    assert letter.attempts == (Attempt(deployment="openai/gpt-4o-mini", error="ConnectError", duration_ms=3.5),)
    assert (letter.at, letter.status, letter.content_type, letter.id) == (1000.0, 502, "application/json", "")


def test_bodies_are_clipped_to_max_body_bytes_after_redaction() -> None:
    # A key that straddles the limit is redacted before the cut: no prefix of it survives.
    text, clipped = redact_body(b"x" * 59 + b" " + SECRET.encode() + b" " + b"y" * 1000, 64)
    assert clipped and len(text.encode()) <= 64 and "sk-" not in text and text == "x" * 59 + " [sec"
    # Multi-byte characters are never cut in half.
    text, clipped = redact_body("é".encode() * 100, 51)
    assert clipped and text == "é" * 25
    # Within the limit: whole; NUL (refused by PostgreSQL) replaced.
    assert redact_body(b'{"a": "b\x00"}', 64) == ('{"a": "b\ufffd"}', False)
    assert redact_body(b"", 0) == ("", False) and redact_body(b"a", 0) == ("", True)
    # A body far past the limit is not even read whole.
    text, clipped = redact_body(b"z" * 10_000_000, 100)
    assert clipped and text == "z" * 100


def test_errors_and_attempts_are_bounded() -> None:
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert len(describe_error("e" * 10_000)) <= 1000 + len("…[clipped]")
    many = [Attempt(deployment=f"d{i}", status=503) for i in range(200)]
    letter = letter_for("r", "/v1/embeddings", None, None, 503, "x", many, b"")
    assert len(letter.attempts) == MAX_ATTEMPTS
    assert letter.attempts[0].deployment == "d0" and letter.attempts[-1].deployment == "d199"


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path: Path) -> None:
    async def body(backend: RecordingBackend) -> None:
        letters = DeadLetters(backend, queue_size=3, batch_size=2, max_body_bytes=32)
        for n in range(5):
            letters.record(failure(n, body=f"{SECRET} {n}"))  # no await between: the writer has not run
        assert (letters.dropped, letters.pending) == (2, 3)
        assert await letters.flush(10)
        assert (letters.written, letters.failed, letters.pending) == (3, 0, 0)
        stored = await backend.letters()
        assert [letter.request_id for letter in stored] == ["req-0", "req-1", "req-2"]
        assert backend.batches == [2, 1]
        assert all(SECRET not in letter.body and letter.clipped is False for letter in stored)
        await letters.aclose()
        letters.record(failure(9))  # closed: refused and counted, never raised
        assert letters.dropped == 3

    run(body, tmp_path)


def test_a_down_backend_keeps_the_batch_and_counts_it_failed_at_close(tmp_path: Path) -> None:
    async def body(backend: RecordingBackend) -> None:
        backend.down = True
        letters = DeadLetters(backend, close_timeout_s=0.5)
        letters.record(failure(1))
        assert not await letters.flush(0.3)  # the backend stays down: the flush cannot end
        assert letters.pending == 1 and letters.written == 0
        backend.down = False
        assert await letters.flush(10)  # retried (a flush cuts the backoff short)
        assert letters.written == 1 and [letter.request_id for letter in await backend.letters()] == ["req-1"]
        backend.down = True
        letters.record(failure(2))
        await letters.aclose()
        assert letters.failed == 1 and letters.pending == 0

    run(body, tmp_path)


def test_a_malformed_failure_is_dropped_not_the_writer(tmp_path: Path) -> None:
    async def body(backend: RecordingBackend) -> None:
        letters = DeadLetters(backend)
        letters.record(failure(1, attempts=[{"no": "deployment"}]))
        letters.record(failure(2))
        assert await letters.flush(10)
        assert letters.failed == 1 and [letter.request_id for letter in await backend.letters()] == ["req-2"]
        await letters.aclose()

    run(body, tmp_path)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "store.db"))  # refused before the store is used: never opened
    for options in ({"max_entries": 0}, {"max_age_s": 0}, {"max_body_bytes": -1}, {"queue_size": 0},
                    {"batch_size": 0}, {"trim_every_s": 0}):
        with pytest.raises(ValueError):
            DeadLetters(StoreBackend(store), **options)
