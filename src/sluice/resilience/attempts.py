"""The attempts of one model call: retries, failover, the deadline and the dead-letter record (docs/resilience.md).

One request's attempts (``Attempts.serve``):

1. The deadline: the caller's ``resilience.timeout_header`` (or the OpenAI SDK's
   ``x-stainless-timeout``), at most ``resilience.timeout_s``.  Every attempt is
   given what is left of it, and no attempt starts that its deployment's usual
   latency says cannot finish in time.
2. An attempt goes to a deployment the model's strategy picks (sluice.routing.plan).
   A connect error, a reset or a timeout before any byte reached the caller, an
   answer whose status is in ``resilience.retry_on``, a 200 that carries an error
   or is not JSON: each is a failure the deployment's breaker counts (a 429 rests
   the deployment's key instead), and the request may go again.
3. Another attempt needs all of: attempts left (``1 + retries`` in all), the
   retry budget (``resilience.retry_budget``), a deployment (another one of the
   model while one is untried, then the fallback models in order, then the same
   one again), and time before the deadline after a jittered backoff (or the
   upstream's Retry-After when it is the same deployment again).
4. When no attempt is left, the last failure is what the caller gets: the
   upstream's own answer, or the gateway's 502/504; the dead-letter queue keeps it.
   A stream whose first event went out is never retried: it ends with an error event.

Sending one attempt and relaying its answer is the server's (``Sender``, sluice.server.forward);
this module decides what happens around it.  The response says who served it:
``x-sluice-model`` (a fallback's name when one served), ``x-sluice-provider`` and
``x-sluice-attempts``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Config
from ..context import Exchange, RequestContext
from ..errors import GatewayError, InvalidRequest
from ..providers import Call, Provider, UpstreamRequest
from ..providers.translate.errors import UnsupportedContent
from ..routing.plan import Plan, Planner, count, no_deployment
from ..upstream import Response, UpstreamClient
from .retry import RetryBudget, backoff_s, parse_timeout

if TYPE_CHECKING:
    from ..routing import Deployment, ModelRoute
    from .dead_letters import DeadLetters

__all__ = ["REPLAY_HEADER", "Attempts", "Build", "FailedAttempt", "Sender", "served_headers", "unsupported"]

REPLAY_HEADER = "x-sluice-dlq-replay"  # `sluice dlq replay` marks its requests with the letter's id
_SDK_TIMEOUT = "x-stainless-timeout"  # what the official OpenAI and Anthropic SDKs send: their own timeout

# The call (and the egress its answer needs: Anthropic's format for a call translated to OpenAI's) that carries
# the request to a deployment; UnsupportedContent when the deployment's kind cannot carry it.
Build = Callable[[Exchange, RequestContext, "Deployment"], tuple[Call, Any]]


class FailedAttempt:
    """A failed attempt that may or may not be the caller's answer: an upstream answer, or the gateway's error."""

    __slots__ = ("call", "data", "deployment", "egress", "error", "reason", "response", "retry_after")

    def __init__(self, deployment: Deployment, call: Call, egress: Any, reason: str, *,
                 response: Response | None = None, data: bytes = b"", error: GatewayError | None = None,
                 retry_after: float | None = None) -> None:
        self.deployment = deployment
        self.call = call
        self.egress = egress
        self.reason = reason  # for metrics: "429", "5xx", "connect", "timeout", "invalid_answer", ...
        self.response = response
        self.data = data
        self.error = error
        self.retry_after = retry_after


class Sender(Protocol):
    """Sends one attempt and relays its answer (sluice.server.forward.Sender)."""

    def prepare(self, ctx: RequestContext, dep: Deployment, call: Call) -> UpstreamRequest: ...

    async def attempt(self, ex: Exchange, ctx: RequestContext, dep: Deployment, call: Call,
                      upstream: UpstreamRequest, egress: Any, deadline: float,
                      attempts: int) -> FailedAttempt | None: ...

    async def deliver(self, ex: Exchange, ctx: RequestContext, failure: FailedAttempt, attempts: int) -> None: ...

    def end_failed(self, ctx: RequestContext, failure: FailedAttempt) -> None: ...


class Attempts:
    """The attempts of each model call; one per gateway (per worker)."""

    def __init__(self, config: Config, planner: Planner, client: Callable[[], UpstreamClient], sender: Sender, *,
                 dead_letters: DeadLetters | None = None) -> None:
        res = config.resilience
        self.planner = planner
        self.client = client
        self.sender = sender
        self.retries = res.retries
        self.one_shot = res.retries == 0  # a plan with one candidate is then one attempt, no loop (serve)
        self.backoff = (res.backoff_base_s, res.backoff_max_s)
        self.max_retry_after_s = res.max_retry_after_s
        self.timeout_s = min(res.timeout_s, config.upstream.total_timeout_s)
        self.timeout_header = res.timeout_header.lower()
        self.budget = RetryBudget(res.retry_budget, res.retry_budget_floor, res.retry_budget_window_s)
        self.dead_letters = dead_letters
        # Bodies are queued raw (the writer redacts 4 x max_body_bytes + 1 KiB of them, then clips): a byte more
        # than that is kept per letter waiting in the queue, so that the writer still sees it was longer.
        self.dead_letter_body = 4 * res.dead_letters.max_body_bytes + 1025
        self.retry_counts: dict[tuple[str, str], int] = {}  # (model, reason) -> retries
        # The worker's upstream client, once the first request made it (in the running loop): kept, so that a
        # request does not call for it again (it is never replaced).
        self._upstream: UpstreamClient | None = None

    def deadline(self, ex: Exchange) -> float:
        """The loop time by which every attempt of this request must be over."""
        timeout = self.timeout_s
        value = ex.header(self.timeout_header)
        if value is not None:
            asked = parse_timeout(value)
            if asked is None:
                raise InvalidRequest(f"The {self.timeout_header} header must be a positive number of seconds, not "
                                     f"{value[:50]!r}.", param=self.timeout_header, code="invalid_timeout")
            timeout = min(timeout, asked)
        elif (sdk := ex.header(_SDK_TIMEOUT)) is not None:
            # The SDKs' own (the Anthropic SDK may send NOT_GIVEN): honoured when it is a number, else ignored.
            asked = parse_timeout(sdk)
            if asked is not None:
                timeout = min(timeout, asked)
        upstream = self._upstream
        if upstream is None:
            upstream = self._upstream = self.client()
        return upstream.loop.time() + timeout

    def serve(self, ex: Exchange, ctx: RequestContext, plan: Plan, build: Build) -> Coroutine[Any, Any, None]:
        """Attempts until one answer reaches the caller (see the module docstring): the loop, or one attempt when
        there is nothing to loop over (no retries configured, and the plan's deployment is its only candidate:
        ``Plan.alone``).  A plain function returning the coroutine (no coroutine level more per request)."""
        if plan.alone and self.one_shot:
            return self._one(ex, ctx, plan, build)
        return self._loop(ex, ctx, plan, build)

    async def _one(self, ex: Exchange, ctx: RequestContext, plan: Plan, build: Build) -> None:
        """The loop's steps for a plan with one candidate and no retries, without the loop: the same checks, the
        same answer, the same errors, counters and dead letter (the loop would end after its first turn)."""
        deadline = self.deadline(ex)
        dep = plan.first
        if not dep.available(time.monotonic()):  # taken while the request awaited its admission
            raise no_deployment(plan.primary.name)
        sender = self.sender
        try:
            call, egress = build(ex, ctx, dep)
            upstream = sender.prepare(ctx, dep, call)
        except UnsupportedContent as exc:
            raise unsupported(exc, dep.provider) from None
        ctx.served_model = plan.route.name  # ctx.retries stays 0
        failure = await sender.attempt(ex, ctx, dep, call, upstream, egress, deadline, 1)
        if failure is None:
            return
        if ctx.trace is not None:
            sender.end_failed(ctx, failure)
        await self._give_up(ex, ctx, [failure], 1, plan.primary, ctx.body or b"")

    async def _loop(self, ex: Exchange, ctx: RequestContext, plan: Plan, build: Build) -> None:
        deadline = self.deadline(ex)
        if self.retries:
            self.budget.requested(time.monotonic())
        planner, sender = self.planner, self.sender
        primary, route = plan.primary, plan.route
        dep: Deployment | None = plan.first
        tried: list[Deployment] = []
        failures: list[FailedAttempt] = []
        attempts = 0
        refused: UnsupportedContent | None = None
        while dep is not None:
            if not dep.available(time.monotonic()):
                # Taken while this request awaited its admission or its backoff (a half-open breaker's
                # probe slot, a key put to rest): another deployment, or the next model.
                route, dep = planner.another(plan, route, tried)
                continue
            try:
                call, egress = build(ex, ctx, dep)
                upstream = sender.prepare(ctx, dep, call)
            except UnsupportedContent as exc:
                # This deployment's kind cannot carry the request (n > 1, a content type...): never sent
                # changed, it goes to another one, or the request is refused when none can take it.
                refused = refused or exc
                tried.append(dep)
                route, dep = planner.another(plan, route, tried)
                continue
            attempts += 1
            ctx.retries = attempts - 1
            ctx.served_model = route.name
            failure = await sender.attempt(ex, ctx, dep, call, upstream, egress, deadline, attempts)
            if failure is None:
                return
            if ctx.trace is not None:
                sender.end_failed(ctx, failure)
            failures.append(failure)
            tried.append(dep)
            next_route, dep = self._next(plan, route, tried, attempts, failure)
            if dep is None:
                break
            if not await self._wait(failure, dep, deadline, attempts):
                dep = None
                break
            if next_route is not route:
                count(planner.failover_counts, (primary.name, next_route.name))
            count(self.retry_counts, (primary.name, failure.reason))
            route = next_route
        if not failures:
            if refused is not None:
                raise unsupported(refused, plan.first.provider)
            raise no_deployment(primary.name)
        await self._give_up(ex, ctx, failures, attempts, primary, ctx.body or b"")

    async def once(self, ex: Exchange, ctx: RequestContext, dep: Deployment, call: Call) -> None:
        """One attempt, no retries (token counting): its answer, or its failure, is the caller's."""
        deadline = self.deadline(ex)
        ctx.served_model = ctx.model
        sender = self.sender
        try:
            upstream = sender.prepare(ctx, dep, call)
        except UnsupportedContent as exc:
            raise unsupported(exc, dep.provider) from None
        failure = await sender.attempt(ex, ctx, dep, call, upstream, None, deadline, 1)
        if failure is None:
            return
        if ctx.trace is not None:
            sender.end_failed(ctx, failure)
        if failure.error is not None:
            raise failure.error
        await sender.deliver(ex, ctx, failure, 1)

    def _next(self, plan: Plan, route: ModelRoute, tried: list[Deployment], attempts: int,
              failure: FailedAttempt) -> tuple[ModelRoute, Deployment | None]:
        """Where the next attempt goes, or None: attempts spent, no deployment, or the budget spent."""
        if attempts > self.retries:
            return route, None
        route, dep = self.planner.retry_target(plan, route, tried)
        if dep is None and failure.retry_after is not None and failure.retry_after <= self.max_retry_after_s:
            dep = failure.deployment  # resting for a short while: _wait sleeps until it may go again
        if dep is None or not self.budget.try_retry(time.monotonic()):
            return route, None
        return route, dep

    async def _wait(self, failure: FailedAttempt, dep: Deployment, deadline: float, attempts: int) -> bool:
        """Sleeps the backoff (or the Retry-After of the same deployment); False if the deadline would not allow
        the next attempt to finish."""
        pause = backoff_s(attempts, *self.backoff)
        if dep is failure.deployment and failure.retry_after is not None:
            if failure.retry_after > self.max_retry_after_s:
                return False  # the upstream asked for longer than we wait
            pause = max(pause, failure.retry_after)
        assert self._upstream is not None  # deadline() made it
        left = deadline - self._upstream.loop.time() - pause
        if left <= 0 or left < dep.ewma_latency_s:
            return False
        if pause > 0:
            await asyncio.sleep(pause)
        return True

    async def _give_up(self, ex: Exchange, ctx: RequestContext, failures: list[FailedAttempt], attempts: int,
                       primary: ModelRoute, body: bytes) -> None:
        """The last failure is the caller's answer; the dead-letter queue keeps the request."""
        last = failures[-1]
        if self.dead_letters is not None:
            self._dead_letter(ex, ctx, failures, primary, body)
        if last.error is not None:
            error = last.error
            error.headers = (*error.headers, *served_headers(ctx.served_model or "",
                                                             last.deployment.provider.name, attempts))
            raise error
        await self.sender.deliver(ex, ctx, last, attempts)

    def _dead_letter(self, ex: Exchange, ctx: RequestContext, failures: list[FailedAttempt], primary: ModelRoute,
                     body: bytes) -> None:
        """Queues the request for `sluice dlq` (raw references only: the writer redacts and clips)."""
        from .dead_letters import Failure  # loaded only when dead letters are on

        assert self.dead_letters is not None
        if ex.header(REPLAY_HEADER) is not None:
            return  # a replay that failed again: its letter is still there, with the replay noted
        last = failures[-1]
        response = last.response
        status = last.error.status if last.error is not None else (response.status if response is not None else 502)
        # Text, not the exception: its traceback would keep this request's frames (and bodies) alive in the queue.
        error = (f"{type(last.error).__name__}: {last.error.message}" if last.error is not None
                 else last.data[:500].decode("utf-8", "replace"))
        tried = [{"deployment": f.deployment.label, "status": f.response.status if f.response is not None else None,
                  "error": f.reason} for f in failures]
        principal = ctx.principal
        self.dead_letters.record(Failure(
            ctx.request_id, ex.path, primary.name, last.deployment.provider.name, status, error, tried,
            body[:self.dead_letter_body],
            key_id=principal.key_id if principal is not None else None, key_prefix=ctx.key_prefix,
            content_type=ex.header("content-type"), method=ex.method))

    def counters(self) -> dict[str, tuple[str, tuple[str, ...], Callable[[], dict[Any, int]]]]:
        """The labelled counters of retries, failovers, A/B variants and breakers, for Metrics.counters."""
        planner = self.planner
        return {
            "sluice_retries": ("Upstream attempts after the first, by model and the failure that caused them.",
                               ("model", "reason"), lambda: self.retry_counts),
            "sluice_failovers": ("Requests moved to a fallback model, by model and fallback.",
                                 ("model", "fallback"), lambda: planner.failover_counts),
            "sluice_variant_requests": ("Requests by model and A/B variant (control: the model itself).",
                                        ("model", "variant"), lambda: planner.variant_counts),
            "sluice_breaker_transitions": ("Circuit-breaker transitions by model and the state entered "
                                           "(open, half_open, closed), summed over workers (each has its own).",
                                           ("model", "state"), lambda: planner.router.transitions),
        }


@functools.lru_cache(maxsize=4096)  # models x providers x attempts of one config: built once each
def served_headers(model: str, provider: str, attempts: int) -> tuple[tuple[str, str], ...]:
    """Who served the answer: x-sluice-model, x-sluice-provider, x-sluice-attempts."""
    return ("x-sluice-model", model), ("x-sluice-provider", provider), ("x-sluice-attempts", str(attempts))


def unsupported(exc: UnsupportedContent, provider: Provider) -> InvalidRequest:
    return InvalidRequest(f"{exc.field}: {exc.reason}; it cannot be sent to provider '{provider.name}' "
                          f"(kind {provider.kind}).", param=exc.field, code="unsupported_content")
