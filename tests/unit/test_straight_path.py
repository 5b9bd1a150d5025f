"""The straight path of a model with one deployment and nothing to retry or fail over to: the Planner's ready
plan and the attempts' one-shot path do what the full decision and the attempt loop do, case by case."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from sluice._native import RequestContext
from sluice.config import parse_config
from sluice.errors import BadGateway, GatewayError, InvalidRequest, NoDeployment
from sluice.providers import Call
from sluice.providers.translate.errors import UnsupportedContent
from sluice.resilience.attempts import Attempts, FailedAttempt
from sluice.routing import Router
from sluice.routing.plan import Plan, Planner

CONFIG = """
providers:
  up: {kind: openai, base_url: "http://127.0.0.1:9"}
  two: {kind: openai, base_url: "http://127.0.0.1:9", api_keys: [k1, k2]}
resilience: {retries: %d}
models:
  solo: {targets: [{provider: up, model: m}]}
  pair: {targets: [{provider: two, model: m}]}
  falls: {targets: [{provider: up, model: m}], fallbacks: [solo]}
  sticky: {targets: [{provider: up, model: m}], strategy: sticky}
"""


class Ex:
    method, path, started, status = "POST", "/v1/chat/completions", False, 0

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.headers = headers or {}

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class Sender:
    """Sends nothing: each attempt's outcome is the test's."""

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome
        self.attempts: list[tuple[str, int, float]] = []
        self.delivered: list[tuple[str, int]] = []
        self.ended: list[str] = []

    def prepare(self, ctx: RequestContext, dep: Any, call: Call) -> Any:
        if self.outcome == "unsupported":
            raise UnsupportedContent("messages[0].content", "not here")
        return "upstream"

    async def attempt(self, ex: Any, ctx: RequestContext, dep: Any, call: Call, upstream: Any, egress: Any,
                      deadline: float, attempts: int) -> FailedAttempt | None:
        self.attempts.append((dep.label, attempts, deadline))
        if self.outcome == "answer":
            return None
        if self.outcome == "upstream-503":
            response = SimpleNamespace(status=503)
            return FailedAttempt(dep, call, egress, "5xx", response=response, data=b'{"error": 1}')  # type: ignore[arg-type]
        return FailedAttempt(dep, call, egress, "connect", error=BadGateway("gone", code="upstream_unavailable"))

    async def deliver(self, ex: Any, ctx: RequestContext, failure: FailedAttempt, attempts: int) -> None:
        self.delivered.append((failure.reason, attempts))

    def end_failed(self, ctx: RequestContext, failure: FailedAttempt) -> None:
        self.ended.append(failure.reason)


class Letters:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def record(self, failure: Any) -> None:
        self.records.append(failure)


def gateway(retries: int = 0) -> tuple[Planner, Attempts, Letters]:
    config = parse_config(CONFIG % retries, {})
    planner = Planner(Router(config, seed=1))
    client = SimpleNamespace(loop=SimpleNamespace(time=lambda: 100.0))
    letters = Letters()
    attempts = Attempts(config, planner, lambda: client, Sender("answer"),  # type: ignore[arg-type]
                        dead_letters=letters)  # type: ignore[arg-type]
    return planner, attempts, letters


def build(ex: Any, ctx: RequestContext, dep: Any) -> tuple[Call, None]:
    return Call("/v1/chat/completions", "POST", b"{}", False, ctx.request_id, dep.model), None


def outcome(planner: Planner, attempts: Attempts, letters: Letters, kind: str, serve: str, *,
            headers: dict[str, str] | None = None, resting: bool = False) -> dict[str, Any]:
    """What serving one request of ``solo`` left behind, by the one-shot path or the loop."""
    sender = attempts.sender = Sender(kind)  # type: ignore[assignment]
    ex, ctx = Ex(headers), RequestContext("req-1", 0.0)
    ctx.body = b'{"model": "solo"}'
    ctx.trace = SimpleNamespace() if kind == "traced" else None
    plan = planner.plan(ex, ctx, SimpleNamespace(model="solo"), "/v1/chat/completions")
    if resting:
        plan.first.cooldown_until = float("inf")
    error: GatewayError | None = None
    try:
        asyncio.run(getattr(attempts, serve)(ex, ctx, plan, build))
    except GatewayError as exc:
        error = exc
    finally:
        plan.first.cooldown_until = 0.0
    return {"error": None if error is None else (type(error), error.status, error.message, error.code,
                                                  error.headers),
            "attempts": sender.attempts, "delivered": sender.delivered, "ended": sender.ended,
            "retries": ctx.retries, "served_model": ctx.served_model, "retry_counts": dict(attempts.retry_counts),
            "letters": list(letters.records)}


def test_a_model_whose_routing_nothing_can_change_has_a_ready_plan() -> None:
    planner, _, _ = gateway()
    assert set(planner.ready) == {"solo", "falls"}  # pair: two keys; sticky: its strategy reads the caller
    ex, ctx = Ex(), RequestContext("req-1", 0.0)
    plan = planner.plan(ex, ctx, SimpleNamespace(model="solo"), "/v1/chat/completions")
    assert plan is planner.ready["solo"] and plan.alone
    assert planner.plan(ex, ctx, SimpleNamespace(model="solo"), "/v1/chat/completions") is plan  # made once
    assert not planner.ready["falls"].alone  # a fallback comes after it


def test_a_resting_ready_deployment_takes_the_full_decision() -> None:
    planner, _, _ = gateway()
    ex, ctx = Ex(), RequestContext("req-1", 0.0)
    falls = planner.ready["falls"]
    falls.first.cooldown_until = float("inf")
    try:
        plan = planner.plan(ex, ctx, SimpleNamespace(model="falls"), "/v1/chat/completions")
        assert plan is not falls and plan.route.name == "solo" and plan.alone  # its fallback's, the last one
        assert planner.failover_counts == {("falls", "solo"): 1}
        planner.ready["solo"].first.cooldown_until = float("inf")
        with pytest.raises(NoDeployment):
            planner.plan(ex, ctx, SimpleNamespace(model="solo"), "/v1/chat/completions")
    finally:
        falls.first.cooldown_until = planner.ready["solo"].first.cooldown_until = 0.0


def test_the_full_decision_says_which_plans_are_alone() -> None:
    planner, _, _ = gateway()
    ex, ctx = Ex(), RequestContext("req-1", 0.0)
    assert planner.plan(ex, ctx, SimpleNamespace(model="sticky"), "/v1/chat/completions").alone
    assert not planner.plan(ex, ctx, SimpleNamespace(model="pair"), "/v1/chat/completions").alone


@pytest.mark.parametrize("kind", ["answer", "upstream-503", "connect", "traced", "unsupported"])
@pytest.mark.parametrize("resting", [False, True])
def test_the_one_shot_path_ends_as_the_loop_ends(kind: str, resting: bool) -> None:
    planner, attempts, letters = gateway()
    one = outcome(planner, attempts, letters, kind, "_one", resting=resting)
    planner, attempts, letters = gateway()
    loop = outcome(planner, attempts, letters, kind, "_loop", resting=resting)
    assert one == loop
    if resting:
        assert one["error"][0] is NoDeployment and not one["attempts"]
    elif kind == "unsupported":
        assert one["error"][0] is InvalidRequest and one["error"][3] == "unsupported_content"
    elif kind != "answer":
        assert len(one["letters"]) == 1


def test_the_deadline_is_the_loops() -> None:
    planner, attempts, letters = gateway()
    one = outcome(planner, attempts, letters, "answer", "_one", headers={"x-stainless-timeout": "2.5"})
    assert one["attempts"] == [("up[0]", 1, 102.5)]
    bad = outcome(planner, attempts, letters, "answer", "_one", headers={"x-sluice-timeout": "soon"})
    assert bad["error"][0] is InvalidRequest and bad["error"][3] == "invalid_timeout" and not bad["attempts"]


def test_serve_takes_the_one_shot_path_only_without_retries_and_for_a_plan_alone() -> None:
    planner, attempts, _ = gateway()
    ex, ctx = Ex(), RequestContext("req-1", 0.0)
    solo = planner.plan(ex, ctx, SimpleNamespace(model="solo"), "/v1/chat/completions")
    pair = planner.plan(ex, ctx, SimpleNamespace(model="pair"), "/v1/chat/completions")
    for plan, path in ((solo, "_one"), (pair, "_loop")):
        coroutine = attempts.serve(ex, ctx, plan, build)
        assert coroutine.cr_code is getattr(Attempts, path).__code__
        coroutine.close()
    planner, attempts, _ = gateway(retries=2)
    coroutine = attempts.serve(ex, ctx, planner.ready["solo"], build)
    assert coroutine.cr_code is Attempts._loop.__code__
    coroutine.close()


def test_a_plan_made_by_hand_knows_whether_it_is_alone() -> None:
    planner, _, _ = gateway()
    solo, falls = planner.router.models["solo"], planner.router.models["falls"]
    assert Plan(solo, solo, solo.targets[0], frozenset(), None, None).alone
    assert not Plan(falls, falls, falls.targets[0], frozenset(), None, None).alone
