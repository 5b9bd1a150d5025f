"""The pipeline runner: request steps in order, response steps in reverse for the stages that ran, whatever
happened (a refusal, an error, the caller gone, a cancellation), an early answer ending the request side."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from sluice.context import ClientGone, RequestContext
from sluice.errors import GatewayError, InvalidRequest
from sluice.pipeline.stage import Pipeline, Stage


class Exchange:
    """The least an Exchange needs for the runner: a response sent is recorded."""

    method = "POST"
    path = "/v1/chat/completions"

    def __init__(self) -> None:
        self.started = False
        self.status = 0
        self.sent: list[tuple[int, bytes]] = []

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.started, self.status = True, status
        self.sent.append((status, body))

    async def discard_body(self, limit: int) -> None:
        return None


class Recording(Stage):
    """Records its steps in ``log``; ``fail`` makes its request step raise it; ``wait`` makes it await."""

    def __init__(self, name: str, log: list[str], *, fail: BaseException | None = None, wait: bool = False,
                 answer: bool = False) -> None:
        self.label = name
        self.log = log
        self.fail = fail
        self.wait = wait
        self.answer = answer

    def on_request(self, ex: Any, ctx: RequestContext) -> Awaitable[None] | None:
        self.log.append(f"request {self.label}")
        if self.wait or self.answer:
            return self._later(ex)
        if self.fail is not None:
            raise self.fail
        return None

    async def _later(self, ex: Exchange) -> None:
        await asyncio.sleep(0)  # pacing: a hook that really suspends once before it answers
        if self.fail is not None:
            raise self.fail
        if self.answer:
            await ex.respond(200, [], b"answered")

    def on_response(self, ex: Any, ctx: RequestContext) -> None:  # type: ignore[override]
        self.log.append(f"response {self.label}")


class RequestOnly(Stage):
    """A stage with no response step: the runner skips it on the way back."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def on_request(self, ex: Any, ctx: RequestContext) -> None:
        self.log.append("request only")


def run(stages: list[Stage], ex: Exchange | None = None) -> tuple[Exchange, RequestContext]:
    ex = ex or Exchange()
    ctx = RequestContext("r", 0.0, "/v1/chat/completions")
    asyncio.run(Pipeline("/v1/chat/completions", stages).run(ex, ctx))  # type: ignore[arg-type]
    return ex, ctx


def test_request_steps_in_order_response_steps_in_reverse() -> None:
    log: list[str] = []
    stages: list[Stage] = [Recording("a", log), RequestOnly(log), Recording("b", log, wait=True),
                           Recording("end", log, answer=True)]
    ex, ctx = run(stages)
    assert log == ["request a", "request only", "request b", "request end", "response end", "response b",
                   "response a"]
    assert ex.sent == [(200, b"answered")] and ctx.status == 200 and ctx.error is None


@pytest.mark.parametrize("awaits", [False, True], ids=["sync", "awaited"])
def test_a_refusing_stage_runs_the_response_steps_of_those_before_it_only(awaits: bool) -> None:
    log: list[str] = []
    refusal = InvalidRequest("no", code="refused")
    stages: list[Stage] = [Recording("a", log), Recording("b", log),
                           Recording("refuses", log, fail=refusal, wait=awaits), Recording("never", log)]
    ex, ctx = run(stages)
    assert log == ["request a", "request b", "request refuses", "response b", "response a"]
    assert ex.status == 400 and b'"code":"refused"' in ex.sent[0][1]
    assert ctx.error == "refused" and ctx.status == 400  # finish ran before the response steps


def test_an_unexpected_error_is_a_500_in_the_callers_format_and_still_settles() -> None:
    log: list[str] = []
    ex, ctx = run([Recording("a", log), Recording("bug", log, fail=RuntimeError("bug"))])
    assert log == ["request a", "request bug", "response a"]
    assert ex.status == 500 and ctx.error == "internal_error"
    assert b"RuntimeError" not in ex.sent[0][1]  # nothing of the gateway's insides reaches the caller


def test_a_caller_gone_is_accounted_as_client_disconnected() -> None:
    log: list[str] = []
    ex, ctx = run([Recording("a", log), Recording("relay", log, fail=ClientGone(), wait=True)])
    assert log == ["request a", "request relay", "response a"]
    assert ex.sent == [] and ctx.error == "client_disconnected"


def test_a_cancelled_request_settles_and_the_cancellation_goes_on() -> None:
    log: list[str] = []
    reached = asyncio.Event()

    class Hangs(Stage):
        def on_request(self, ex: Any, ctx: RequestContext) -> Awaitable[None]:
            return self._hang()

        async def _hang(self) -> None:
            reached.set()
            await asyncio.Event().wait()

    async def main() -> RequestContext:
        ctx = RequestContext("r", 0.0, "/v1/chat/completions")
        task = asyncio.create_task(Pipeline("/x", [Recording("a", log), Hangs()]).run(Exchange(), ctx))  # type: ignore[arg-type]
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ctx

    ctx = asyncio.run(main())
    assert log == ["request a", "response a"] and ctx.error == "client_disconnected"


def test_an_early_answer_ends_the_request_side() -> None:
    log: list[str] = []
    ex, _ = run([Recording("a", log), Recording("cache", log, answer=True), Recording("upstream", log)])
    assert log == ["request a", "request cache", "response cache", "response a"]
    assert ex.sent == [(200, b"answered")]


def test_a_failing_response_step_does_not_stop_the_others() -> None:
    log: list[str] = []

    class Breaks(Recording):
        def on_response(self, ex: Any, ctx: RequestContext) -> None:  # type: ignore[override]
            raise RuntimeError("broken response step")

    run([Recording("a", log), Breaks("b", log), Recording("end", log, answer=True)])
    assert log == ["request a", "request b", "request end", "response end", "response a"]


def test_a_pipeline_without_response_steps_skips_the_finish() -> None:
    class Answers(Stage):
        async def on_request(self, ex: Any, ctx: RequestContext) -> None:  # type: ignore[override]
            await ex.respond(200, [], b"ok")

    ex, ctx = run([RequestOnly([]), Answers()])
    assert ex.status == 200 and ctx.status == 0 and ctx.total_s == 0.0  # nobody reads them: not computed


def test_the_error_is_in_the_pipelines_wire_format() -> None:
    ex = Exchange()
    ctx = RequestContext("r", 0.0, "/v1/messages")
    pipeline = Pipeline("/v1/messages", [Recording("x", [], fail=InvalidRequest("bad", code="bad"))],
                        wire="anthropic")
    asyncio.run(pipeline.run(ex, ctx))  # type: ignore[arg-type]
    assert b'"type":"error"' in ex.sent[0][1] and b'"invalid_request_error"' in ex.sent[0][1]


def test_refusals_reach_the_audit_hook() -> None:
    seen: list[GatewayError] = []
    pipeline = Pipeline("/x", [Recording("x", [], fail=InvalidRequest("bad", code="bad"))],
                        audit=lambda ex, ctx, exc: seen.append(exc))
    asyncio.run(pipeline.run(Exchange(), RequestContext("r", 0.0, "/x")))  # type: ignore[arg-type]
    assert [e.code for e in seen] == ["bad"]
