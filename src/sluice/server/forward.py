"""Sending a model call upstream, with retries, failover and a deadline, and relaying the answer.

One request's attempts (``Forwarder.serve``):

1. The deadline: the caller's ``resilience.timeout_header`` (or the OpenAI SDK's
   ``x-stainless-timeout``), at most ``resilience.timeout_s``.  Every attempt is
   given what is left of it, and no attempt starts that its deployment's usual
   latency says cannot finish in time.
2. An attempt goes to a deployment the model's strategy picks (``routing``).  A
   connect error, a reset or a timeout before any byte reached the caller, an
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

The response says who served it: ``x-sluice-model`` (a fallback's name when one
served), ``x-sluice-provider`` and ``x-sluice-attempts``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from .._native import USAGE_TAIL, count_tokens
from ..config import Config
from ..errors import BadGateway, GatewayError, GatewayTimeout, InvalidRequest, NoDeployment
from ..providers import Call, InvalidAnswer, Provider, UpstreamRequest
from ..providers.translate.errors import UnsupportedContent
from ..resilience.retry import RetryBudget, backoff_s, parse_retry_after, parse_timeout
from ..routing import affinity_draw, sticky_affinity
from ..upstream import Response, ResponseTooLarge, UpstreamClient, UpstreamError, UpstreamTimeout
from .messages import Egress, chain
from .relay import relay_headers, relay_stream, relay_translated

if TYPE_CHECKING:
    from ..resilience.dead_letters import DeadLetters
    from ..routing import Deployment, ModelRoute, Router
    from .app import RequestContext
    from .exchange import Exchange

__all__ = ["Build", "Forwarder", "gateway_error", "unsupported", "variant_draw"]

log = logging.getLogger("sluice.gateway")

JSON = "application/json"
# gen_ai.operation.name of each endpoint (OpenTelemetry GenAI conventions).
_OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion", "/v1/embeddings": "embeddings",
               "/v1/messages": "chat"}
REPLAY_HEADER = "x-sluice-dlq-replay"  # `sluice dlq replay` marks its requests with the letter's id
_SDK_TIMEOUT = "x-stainless-timeout"  # what the official OpenAI and Anthropic SDKs send: their own timeout

# The call (and the egress its answer needs) that carries this request to a deployment; UnsupportedContent
# when the deployment's kind cannot carry it.
Build = Callable[["Deployment"], tuple[Call, Egress | None]]


class _Failure:
    """A failed attempt that may or may not be the caller's answer: an upstream answer, or the gateway's error."""

    __slots__ = ("call", "data", "deployment", "egress", "error", "reason", "response", "retry_after")

    def __init__(self, deployment: Deployment, call: Call, egress: Egress | None, reason: str, *,
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


class Forwarder:
    """The attempts of each model call; one per gateway (per worker)."""

    def __init__(self, config: Config, router: Router, client: Callable[[], UpstreamClient], *,
                 keep_answer: bool, log_bodies: bool, dead_letters: DeadLetters | None = None) -> None:
        res = config.resilience
        self.router = router
        self.client = client
        self.keep_answer = keep_answer
        self.log_bodies = log_bodies
        self.max_response = config.server.max_response_bytes
        self.retries = res.retries
        self.retry_on = frozenset(res.retry_on)
        self.backoff = (res.backoff_base_s, res.backoff_max_s)
        self.max_retry_after_s = res.max_retry_after_s
        self.timeout_s = min(res.timeout_s, config.upstream.total_timeout_s)
        self.timeout_header = res.timeout_header.lower()
        routes = router.models.values()
        # Models whose own targets can do everything but whose fallbacks cannot: their requests' needs are
        # worked out all the same, so that a fallback that lacks one is skipped.
        self.needs_checked = frozenset(r.name for r in routes if any(not f.complete for f in r.fallbacks))
        # Retries and fallbacks are what make a failure worth telling apart from an answer.
        self.resilient = res.retries > 0 or any(r.fallbacks for r in routes)
        self.budget = RetryBudget(res.retry_budget, res.retry_budget_floor, res.retry_budget_window_s)
        self.dead_letters = dead_letters
        # The worker's upstream client, once the first request made it (in the running loop): kept, so that a
        # request does not call for it again (it is never replaced).
        self._upstream: UpstreamClient | None = None
        # Bodies are queued raw (the writer redacts 4 x max_body_bytes + 1 KiB of them, then clips): a byte more
        # than that is kept per letter waiting in the queue, so that the writer still sees it was longer.
        self.dead_letter_body = 4 * res.dead_letters.max_body_bytes + 1025
        self.retry_counts: dict[tuple[str, str], int] = {}  # (model, reason) -> retries
        self.failover_counts: dict[tuple[str, str], int] = {}  # (model, fallback) -> requests moved
        self.variant_counts: dict[tuple[str, str], int] = {}  # (model, variant) -> requests

    # -- one request ---------------------------------------------------------------------

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

    @staticmethod
    def affinity(ex: Exchange, ctx: RequestContext, route: ModelRoute) -> str | None:
        """What keeps a caller on one deployment (sticky) and in one A/B arm: its key, user or a header."""
        principal = ctx.principal
        if principal is not None:
            return sticky_affinity(route, principal.key_id, principal.user, ex.header)
        return sticky_affinity(route, ex.header("authorization") or ex.header("x-api-key"), None, ex.header)

    @staticmethod
    def caller_region(ex: Exchange, route: ModelRoute) -> str | None:
        """The caller's region (geo models): its header, else this instance's region."""
        return ex.header(route.region_header) or route.region

    def first(self, route: ModelRoute, needs: frozenset[str], affinity: str | None,
              region: str | None) -> tuple[ModelRoute, Deployment]:
        """The first attempt's deployment: the model's, else a fallback's; 503 when none is available."""
        dep = route.choose(needs, affinity=affinity, region=region, now=time.monotonic())
        if dep is not None:
            return route, dep
        fallback, dep = self._next_model(route, route, needs, [], affinity, region)
        if dep is None:
            raise NoDeployment(f"No deployment of model `{route.name}` (or of its fallbacks) can take this request "
                               "now: they are failing or resting. Retry later.", code="no_healthy_deployment",
                               headers=(("retry-after", "1"),))
        _count(self.failover_counts, (route.name, fallback.name))
        return fallback, dep

    async def serve(self, ex: Exchange, ctx: RequestContext, primary: ModelRoute, route: ModelRoute,
                    first: Deployment, needs: frozenset[str], affinity: str | None, region: str | None,
                    build: Build, body: bytes) -> None:
        """Attempts until one answer reaches the caller (see the module docstring); ``route`` and ``first``
        come from ``first()``."""
        deadline = self.deadline(ex)
        if self.retries:
            self.budget.requested(time.monotonic())
        dep: Deployment | None = first
        tried: list[Deployment] = []
        failures: list[_Failure] = []
        attempts = 0
        refused: UnsupportedContent | None = None
        while dep is not None:
            if not dep.available(time.monotonic()):
                # Taken while this request awaited its admission or its backoff (a half-open breaker's
                # probe slot, a key put to rest): another deployment, or the next model.
                route, dep = self._another(route, primary, needs, tried, affinity, region)
                continue
            try:
                call, egress = build(dep)
                upstream = self._prepared(ctx, dep, call)
            except UnsupportedContent as exc:
                # This deployment's kind cannot carry the request (n > 1, a content type...): never sent
                # changed, it goes to another one, or the request is refused when none can take it.
                refused = refused or exc
                tried.append(dep)
                route, dep = self._another(route, primary, needs, tried, affinity, region)
                continue
            attempts += 1
            ctx.retries = attempts - 1
            ctx.served_model = route.name
            failure = await self._attempt(ex, ctx, dep, call, upstream, egress, deadline, attempts)
            if failure is None:
                return
            if ctx.trace is not None:
                _end_failed(ctx, failure)
            failures.append(failure)
            tried.append(dep)
            next_route, dep = self._next(route, primary, needs, tried, affinity, region, attempts, failure)
            if dep is None:
                break
            if not await self._wait(failure, dep, next_route, deadline, attempts):
                dep = None
                break
            if next_route is not route:
                _count(self.failover_counts, (primary.name, next_route.name))
            _count(self.retry_counts, (primary.name, failure.reason))
            route = next_route
        if not failures:
            if refused is not None:
                raise unsupported(refused, first.provider)
            raise NoDeployment(f"No deployment of model `{primary.name}` (or of its fallbacks) can take this request "
                               "now: they are failing or resting. Retry later.", code="no_healthy_deployment",
                               headers=(("retry-after", "1"),))
        await self._give_up(ex, ctx, failures, attempts, primary, body)

    def _another(self, route: ModelRoute, primary: ModelRoute, needs: frozenset[str], tried: list[Deployment],
                 affinity: str | None, region: str | None) -> tuple[ModelRoute, Deployment | None]:
        """Another available deployment of ``route`` not in ``tried``, else the next fallback's."""
        dep = route.choose(needs, affinity=affinity, region=region, exclude=tried, now=time.monotonic())
        if dep is not None:
            return route, dep
        return self._next_model(route, primary, needs, tried, affinity, region)

    def _next(self, route: ModelRoute, primary: ModelRoute, needs: frozenset[str], tried: list[Deployment],
              affinity: str | None, region: str | None, attempts: int,
              failure: _Failure) -> tuple[ModelRoute, Deployment | None]:
        """Where the next attempt goes, or None: attempts spent, no deployment, or the budget spent."""
        if attempts > self.retries:
            return route, None
        now = time.monotonic()
        dep = route.choose(needs, affinity=affinity, region=region, exclude=tried, now=now)
        if dep is None:
            next_route, dep = self._next_model(route, primary, needs, tried, affinity, region)
            if dep is not None:
                route = next_route
        if dep is None:  # every deployment was tried: the same again, if it is still up
            dep = route.choose(needs, affinity=affinity, region=region, now=now)
            if dep is None and failure.retry_after is not None and failure.retry_after <= self.max_retry_after_s:
                dep = failure.deployment  # resting for a short while: _wait sleeps until it may go again
        if dep is None or not self.budget.try_retry(now):
            return route, None
        return route, dep

    def _next_model(self, route: ModelRoute, primary: ModelRoute, needs: frozenset[str], tried: list[Deployment],
                    affinity: str | None, region: str | None) -> tuple[ModelRoute, Deployment | None]:
        """The first fallback after ``route`` in the primary's chain with a deployment that can serve ``needs``."""
        chain_ = primary.fallbacks
        start = 0 if route is primary else next((i + 1 for i, r in enumerate(chain_) if r is route), len(chain_))
        now = time.monotonic()
        for fallback in chain_[start:]:  # choose() skips one that cannot do what the request needs
            dep = fallback.choose(needs, affinity=affinity, region=region, exclude=tried, now=now)
            if dep is not None:
                return fallback, dep
        return route, None

    async def _wait(self, failure: _Failure, dep: Deployment, route: ModelRoute, deadline: float,
                    attempts: int) -> bool:
        """Sleeps the backoff (or the Retry-After of the same deployment); False if the deadline would not allow
        the next attempt to finish."""
        pause = backoff_s(attempts, *self.backoff)
        if dep is failure.deployment and failure.retry_after is not None:
            if failure.retry_after > self.max_retry_after_s:
                return False  # the upstream asked for longer than we wait
            pause = max(pause, failure.retry_after)
        left = deadline - self.client().loop.time() - pause
        if left <= 0 or left < dep.ewma_latency_s:
            return False
        if pause > 0:
            await asyncio.sleep(pause)
        return True

    async def _give_up(self, ex: Exchange, ctx: RequestContext, failures: list[_Failure], attempts: int,
                       primary: ModelRoute, body: bytes) -> None:
        """The last failure is the caller's answer; the dead-letter queue keeps the request."""
        last = failures[-1]
        if self.dead_letters is not None:
            self._dead_letter(ex, ctx, failures, primary, body)
        if last.error is not None:
            error = last.error
            error.headers = (*error.headers, *_served(ctx, last.deployment.provider, attempts))
            raise error
        await self._deliver_failure(ex, ctx, last, attempts)

    async def _deliver_failure(self, ex: Exchange, ctx: RequestContext, failure: _Failure, attempts: int) -> None:
        assert failure.response is not None
        provider, call = failure.deployment.provider, failure.call
        data = self._translated(provider, call, failure.response.status, failure.data)
        await ex.respond(*self._answer(ctx, provider, call, failure.response, data, failure.egress, attempts))

    def _dead_letter(self, ex: Exchange, ctx: RequestContext, failures: list[_Failure], primary: ModelRoute,
                     body: bytes) -> None:
        """Queues the request for `sluice dlq` (raw references only: the writer redacts and clips)."""
        from ..resilience.dead_letters import Failure  # loaded only when dead letters are on

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

    # -- one attempt ----------------------------------------------------------------------

    @staticmethod
    def _prepared(ctx: RequestContext, dep: Deployment, call: Call) -> UpstreamRequest:
        """The upstream request of ``call`` to ``dep`` (UnsupportedContent when its kind cannot carry it)."""
        call.auth = dep.auth
        upstream = dep.provider.prepare(call)
        if ctx.trace is not None:
            upstream.headers.extend(ctx.trace.start_upstream(_OPERATIONS.get(call.endpoint, "chat"), call.model,
                                                             dep.provider.kind, dep.provider.name,
                                                             upstream.origin.host))
        elif ctx.propagated is not None:  # traced, not sampled: its context goes upstream all the same
            upstream.headers.extend(ctx.propagated)
        return upstream

    async def _attempt(self, ex: Exchange, ctx: RequestContext, dep: Deployment, call: Call,
                       upstream: UpstreamRequest, egress: Egress | None, deadline: float,
                       attempts: int) -> _Failure | None:
        """Sends the call to ``dep``; None once an answer reached the caller, else the failure to decide on."""
        provider = dep.provider
        ctx.provider = provider.name
        client = self._upstream
        assert client is not None  # deadline() made it
        dep.begin(time.monotonic())
        sent = time.perf_counter()
        try:
            response = await client.request(upstream.origin, upstream.method, upstream.target, upstream.headers,
                                            upstream.body, deadline=deadline)
            ctx.upstream_status = status = response.status
            if call.stream and status == 200 and _is_event_stream(response):
                # Nothing goes to the caller before the first bytes of the stream: until then a reset, a
                # timeout or an error event is a failure like any other, and may be retried.
                try:
                    first = await response.next_chunk()
                except BaseException:
                    response.abort()  # the connection goes back to its pool (closed), whatever stopped the read
                    raise
                ctx.upstream_s += time.perf_counter() - sent
                if self.resilient and (not first or _error_event(first)):
                    response.abort()
                    dep.failed(time.monotonic(), time.perf_counter() - sent)
                    error = BadGateway(f"The upstream provider '{provider.name}' began its stream with an error "
                                       "or ended it at once.", code="upstream_stream_error")
                    return _Failure(dep, call, egress, "invalid_answer", error=error)
                await self._relay_stream(ex, ctx, dep, call, response, egress, sent, attempts, first)
                return None
            data = response.read_arrived(self.max_response)
            if data is None:
                data = await response.read(self.max_response)
        except UpstreamError as exc:
            spent = time.perf_counter() - sent
            ctx.upstream_s += spent
            dep.failed(time.monotonic(), spent)
            reason = "timeout" if isinstance(exc, UpstreamTimeout) else "connect"
            return _Failure(dep, call, egress, reason, error=gateway_error(exc, provider.name, ctx.request_id))
        except BaseException:
            dep.released(time.monotonic())  # the caller left, or the worker stops: no verdict on the deployment
            raise
        spent = time.perf_counter() - sent
        ctx.upstream_s += spent
        now = time.monotonic()
        if status in self.retry_on:
            retry_after = parse_retry_after(response.header(b"retry-after"), response.header(b"retry-after-ms"))
            if status == 429:
                dep.cool_down(now, retry_after)
            elif status >= 500 or status == 408:
                dep.failed(now, spent)
            else:
                dep.released(now)
            reason = "5xx" if status >= 500 else str(status)
            return _Failure(dep, call, egress, reason, response=response, data=data, retry_after=retry_after)
        if status == 200 and self.resilient and not _answer_ok(data):
            dep.failed(now, spent)
            error = BadGateway(f"The upstream provider '{provider.name}' answered 200 with an error or a body that "
                               "is not JSON.", code="upstream_invalid_answer")
            return _Failure(dep, call, egress, "invalid_answer", response=response, data=data, error=error)
        try:
            data = self._translated(provider, call, status, data)
        except BadGateway as exc:
            dep.failed(now, spent)
            return _Failure(dep, call, egress, "invalid_answer", error=exc)
        except BaseException:
            dep.released(now)
            raise
        dep.succeeded(now, spent, spent)
        await ex.respond(*self._answer(ctx, provider, call, response, data, egress, attempts))
        return None

    async def forward(self, ex: Exchange, ctx: RequestContext, dep: Deployment, call: Call) -> None:
        """One attempt, no retries (token counting): its answer, or its failure, is the caller's."""
        deadline = self.deadline(ex)
        ctx.served_model = ctx.model
        try:
            upstream = self._prepared(ctx, dep, call)
        except UnsupportedContent as exc:
            raise unsupported(exc, dep.provider) from None
        failure = await self._attempt(ex, ctx, dep, call, upstream, None, deadline, 1)
        if failure is not None and ctx.trace is not None:
            _end_failed(ctx, failure)
        if failure is None:
            return
        if failure.error is not None:
            raise failure.error
        await self._deliver_failure(ex, ctx, failure, 1)

    @staticmethod
    def _translated(provider: Provider, call: Call, status: int, data: bytes) -> bytes:
        """The upstream's answer in the call's format (502 when it is not what its kind promises)."""
        if not provider.translates(call):
            return data
        try:
            return provider.answer(call, status, data)
        except (InvalidAnswer, UnsupportedContent, TypeError, AttributeError, KeyError) as exc:
            raise BadGateway(f"The upstream provider '{provider.name}' gave an answer that is not a valid "
                             f"{provider.kind} answer ({exc}).", code="upstream_invalid_answer") from None

    def _answer(self, ctx: RequestContext, provider: Provider, call: Call, response: Response, data: bytes,
                egress: Egress | None, attempts: int) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers and body of the answer (already in the call's format) in the caller's format, with the
        gateway's headers (a plain function: one coroutine less per request)."""
        status = response.status
        translates = provider.translates(call)
        translated = translates or egress is not None
        # A native answer passed on untouched: its kind counts its tokens (counting tokens is not usage).
        if call.wire != "openai" and not translates and call.endpoint != "/v1/messages/count_tokens":
            native = provider.token_counts(call, data)
            if native is not None:
                ctx.tokens_in, ctx.tokens_out = native
        if self.keep_answer:
            # Where usage is; never hold a whole answer in the log queue (unless bodies are logged).
            ctx.answer = data if self.log_bodies else data[-USAGE_TAIL:]
        if ctx.trace is not None:
            _end_attempt(ctx, status)
        if egress is not None:
            status, data = egress.answer(status, data)
        headers = relay_headers(response)
        if translated:  # the body is ours now: its type is JSON, whatever the upstream said of its own
            headers = [(n, v) for n, v in headers if n not in ("content-type", "content-encoding")]
            headers.append(("content-type", JSON))
        if ctx.admission is not None:  # our limits speak for the gateway; the provider's are renamed
            headers = [(f"x-upstream-{n[2:]}" if n.startswith("x-ratelimit-") else n, v) for n, v in headers]
        return status, ctx.headers(*headers, *_served(ctx, provider, attempts)), data

    async def _relay_stream(self, ex: Exchange, ctx: RequestContext, dep: Deployment, call: Call,
                            response: Response, egress: Egress | None, sent: float, attempts: int,
                            first: bytes) -> None:
        provider = dep.provider
        translator = chain(provider.stream(call), egress.stream() if egress is not None else None)
        headers = ctx.headers(*relay_headers(response), *_served(ctx, provider, attempts))
        if translator is None:
            relayed = await relay_stream(ex, response, headers, ctx.usage_asked, first)
            ctx.answer = relayed.usage
        else:
            relayed = await relay_translated(ex, response, headers, translator, first)
            ctx.tokens_in, ctx.tokens_out = translator.usage
        ctx.error = relayed.error
        now = time.monotonic()
        spent = time.perf_counter() - sent
        ttfb = relayed.first_event_at - sent if relayed.first_event_at > 0 else spent
        if relayed.first_event_at > 0:
            ctx.ttft_s = ttfb
        if relayed.error is None:
            dep.succeeded(now, spent, ttfb)
        elif relayed.error == "client_disconnected":
            dep.released(now)
        else:
            dep.failed(now, spent)  # cut or malformed mid-stream: too late to retry, not too late to count
        if ctx.trace is not None:
            _end_attempt(ctx, response.status)

    # -- metrics --------------------------------------------------------------------------

    def count_variant(self, model: str, variant: str) -> None:
        _count(self.variant_counts, (model, variant))

    def counters(self) -> dict[str, tuple[str, tuple[str, ...], Callable[[], dict[Any, int]]]]:
        """The labelled counters of retries, failovers and A/B variants, for Metrics.counters."""
        return {
            "sluice_retries": ("Upstream attempts after the first, by model and the failure that caused them.",
                               ("model", "reason"), lambda: self.retry_counts),
            "sluice_failovers": ("Requests moved to a fallback model, by model and fallback.",
                                 ("model", "fallback"), lambda: self.failover_counts),
            "sluice_variant_requests": ("Requests by model and A/B variant (control: the model itself).",
                                        ("model", "variant"), lambda: self.variant_counts),
            "sluice_breaker_transitions": ("Circuit-breaker transitions by model and the state entered "
                                           "(open, half_open, closed), summed over workers (each has its own).",
                                           ("model", "state"), lambda: self.router.transitions),
        }


def _served(ctx: RequestContext, provider: Provider, attempts: int) -> tuple[tuple[str, str], ...]:
    return _served_headers(ctx.served_model or "", provider.name, attempts)


@functools.lru_cache(maxsize=4096)  # models x providers x attempts of one config: built once each
def _served_headers(model: str, provider: str, attempts: int) -> tuple[tuple[str, str], ...]:
    return ("x-sluice-model", model), ("x-sluice-provider", provider), ("x-sluice-attempts", str(attempts))


_PARSED_UP_TO = 16 * 1024  # answers above this are checked at their ends only (a full parse would stall the loop)


def _answer_ok(data: bytes) -> bool:
    """A 200 answer is JSON and not an error object (some upstreams answer errors with 200)."""
    if len(data) > _PARSED_UP_TO:
        head, tail = data[:64].lstrip(), data[-64:].rstrip()
        return head[:1] in (b"{", b"[") and tail[-1:] in (b"}", b"]") and not head.startswith(b'{"error"')
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return not (isinstance(parsed, dict) and "error" in parsed and len(parsed) <= 2 and "choices" not in parsed)


def _error_event(first: bytes) -> bool:
    """A stream that opens with an error event (OpenAI's and Gemini's data: {"error": ...}, Anthropic's
    event: error) rather than an answer."""
    head = first[:32].lstrip()
    return head.startswith((b"event: error", b"event:error", b'data: {"error"', b'data:{"error"'))


def _end_failed(ctx: RequestContext, failure: _Failure) -> None:
    """A failed attempt's span ends now, not when the next attempt begins."""
    assert ctx.trace is not None
    ctx.trace.end_upstream(failure.response.status if failure.response is not None else 0, -1, -1, failure.reason)


def _count(counts: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
    counts[key] = counts.get(key, 0) + 1


def _end_attempt(ctx: RequestContext, status: int) -> None:
    assert ctx.trace is not None
    count_tokens(ctx)
    ctx.trace.end_upstream(status, ctx.tokens_in, ctx.tokens_out, ctx.error)


def _is_event_stream(response: Response) -> bool:
    """An upstream may answer a stream request with plain JSON; that is relayed as it is."""
    content_type = response.header(b"content-type")
    return content_type is not None and content_type.lower().startswith(b"text/event-stream")


def unsupported(exc: UnsupportedContent, provider: Provider) -> InvalidRequest:
    return InvalidRequest(f"{exc.field}: {exc.reason}; it cannot be sent to provider '{provider.name}' "
                          f"(kind {provider.kind}).", param=exc.field, code="unsupported_content")


def gateway_error(exc: UpstreamError, provider: str, request_id: str) -> GatewayError:
    log.warning("upstream %s failed: %s", provider, exc, extra={"request_id": request_id})
    if isinstance(exc, UpstreamTimeout):
        return GatewayTimeout(f"The upstream provider '{provider}' did not answer in time.", code="upstream_timeout")
    if isinstance(exc, ResponseTooLarge):
        return BadGateway(f"The upstream provider '{provider}' answered more than the gateway accepts.",
                          code="upstream_response_too_large")
    return BadGateway(f"The upstream provider '{provider}' could not be reached: {exc}", code="upstream_unavailable")


def variant_draw(affinity: str | None) -> float:
    """The A/B arm's draw: fixed by the sticky affinity when there is one (a caller stays in its arm), else random."""
    return random.random() if affinity is None else affinity_draw(affinity)
