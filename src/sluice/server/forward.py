"""Sending one attempt of a model call upstream and relaying its answer to the caller (``Sender``).

The attempt loop around it (retries, failover, the deadline, dead letters) is sluice.resilience.attempts;
the routing decision is sluice.routing.plan.  An attempt that fails before any byte reached the caller
comes back as a ``FailedAttempt`` for the loop to decide on; a stream is never retried once its first
event went out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from .._native import USAGE_TAIL, answer_head, count_tokens
from ..config import Config
from ..context import Exchange, RequestContext
from ..errors import BadGateway, GatewayError, GatewayTimeout
from ..providers import Call, InvalidAnswer, Provider, UpstreamRequest
from ..providers.translate.errors import UnsupportedContent
from ..resilience.attempts import FailedAttempt
from ..resilience.retry import parse_retry_after
from ..upstream import Response, ResponseTooLarge, UpstreamClient, UpstreamError, UpstreamTimeout
from .messages import Egress, chain
from .relay import RELAYED_AS, relay_stream, relay_translated, relayed_as

if TYPE_CHECKING:
    from ..routing import Deployment

__all__ = ["Sender", "gateway_error"]

log = logging.getLogger("sluice.gateway")

JSON = "application/json"
# gen_ai.operation.name of each endpoint (OpenTelemetry GenAI conventions).
_OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion", "/v1/embeddings": "embeddings",
               "/v1/messages": "chat"}


class Sender:
    """Sends one attempt and relays its answer; one per gateway (per worker)."""

    def __init__(self, config: Config, client: Callable[[], UpstreamClient], *, keep_answer: bool,
                 log_bodies: bool) -> None:
        res = config.resilience
        self.client = client
        self.keep_answer = keep_answer
        self.log_bodies = log_bodies
        self.max_response = config.server.max_response_bytes
        self.retry_on = frozenset(res.retry_on)
        # Retries and fallbacks are what make a failure worth telling apart from an answer.
        self.resilient = res.retries > 0 or any(m.fallbacks for m in config.models.values())
        self._upstream: UpstreamClient | None = None  # the worker's client, once made (never replaced)

    # -- one attempt ----------------------------------------------------------------------

    @staticmethod
    def prepare(ctx: RequestContext, dep: Deployment, call: Call) -> UpstreamRequest:
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

    async def attempt(self, ex: Exchange, ctx: RequestContext, dep: Deployment, call: Call,
                      upstream: UpstreamRequest, egress: Egress | None, deadline: float,
                      attempts: int) -> FailedAttempt | None:
        """Sends the call to ``dep``; None once an answer reached the caller, else the failure to decide on."""
        provider = dep.provider
        ctx.provider = provider.name
        client = self._upstream
        if client is None:
            client = self._upstream = self.client()
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
                    return FailedAttempt(dep, call, egress, "invalid_answer", error=error)
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
            return FailedAttempt(dep, call, egress, reason, error=gateway_error(exc, provider.name, ctx.request_id))
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
            return FailedAttempt(dep, call, egress, reason, response=response, data=data, retry_after=retry_after)
        if status == 200 and self.resilient and not _answer_ok(data):
            dep.failed(now, spent)
            error = BadGateway(f"The upstream provider '{provider.name}' answered 200 with an error or a body that "
                               "is not JSON.", code="upstream_invalid_answer")
            return FailedAttempt(dep, call, egress, "invalid_answer", response=response, data=data, error=error)
        try:
            data = self._translated(provider, call, status, data)
        except BadGateway as exc:
            dep.failed(now, spent)
            return FailedAttempt(dep, call, egress, "invalid_answer", error=exc)
        except BaseException:
            dep.released(now)
            raise
        dep.succeeded(now, spent, spent)
        await ex.respond(*self._answer(ctx, provider, call, response, data, egress, attempts))
        return None

    async def deliver(self, ex: Exchange, ctx: RequestContext, failure: FailedAttempt, attempts: int) -> None:
        """A failed attempt's upstream answer, as the caller's answer (no attempt left)."""
        assert failure.response is not None
        provider, call = failure.deployment.provider, failure.call
        data = self._translated(provider, call, failure.response.status, failure.data)
        await ex.respond(*self._answer(ctx, provider, call, failure.response, data, failure.egress, attempts))

    @staticmethod
    def end_failed(ctx: RequestContext, failure: FailedAttempt) -> None:
        """A failed attempt's span ends now, not when the next attempt begins."""
        assert ctx.trace is not None
        ctx.trace.end_upstream(failure.response.status if failure.response is not None else 0, -1, -1,
                               failure.reason)

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
        # The whole head in one call: ours, the upstream's as relayed (a translated body is ours: its type is
        # JSON, whatever the upstream said of its own; with rate limits on, the provider's are renamed: ours
        # speak for the gateway), who served it.
        return status, answer_head(ctx, response.headers, RELAYED_AS, relayed_as, provider.name, attempts,
                                   translated), data

    async def _relay_stream(self, ex: Exchange, ctx: RequestContext, dep: Deployment, call: Call,
                            response: Response, egress: Egress | None, sent: float, attempts: int,
                            first: bytes) -> None:
        provider = dep.provider
        translator = chain(provider.stream(call), egress.stream() if egress is not None else None)
        headers = answer_head(ctx, response.headers, RELAYED_AS, relayed_as, provider.name, attempts, False)
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
        elif relayed.error in ("client_disconnected", "client_stalled"):  # the caller's doing, not the upstream's
            dep.released(now)
        else:
            dep.failed(now, spent)  # cut or malformed mid-stream: too late to retry, not too late to count
        if ctx.trace is not None:
            _end_attempt(ctx, response.status)


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


def _end_attempt(ctx: RequestContext, status: int) -> None:
    assert ctx.trace is not None
    count_tokens(ctx)
    ctx.trace.end_upstream(status, ctx.tokens_in, ctx.tokens_out, ctx.error)


def _is_event_stream(response: Response) -> bool:
    """An upstream may answer a stream request with plain JSON; that is relayed as it is."""
    content_type = response.header(b"content-type")
    return content_type is not None and content_type.lower().startswith(b"text/event-stream")


def gateway_error(exc: UpstreamError, provider: str, request_id: str) -> GatewayError:
    log.warning("upstream %s failed: %s", provider, exc, extra={"request_id": request_id})
    if isinstance(exc, UpstreamTimeout):
        return GatewayTimeout(f"The upstream provider '{provider}' did not answer in time.", code="upstream_timeout")
    if isinstance(exc, ResponseTooLarge):
        return BadGateway(f"The upstream provider '{provider}' answered more than the gateway accepts.",
                          code="upstream_response_too_large")
    return BadGateway(f"The upstream provider '{provider}' could not be reached: {exc}", code="upstream_unavailable")
