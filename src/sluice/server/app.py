"""The gateway: dispatches each Exchange by exact path and method, proxies to the model's target.

Built once per config snapshot by ``create_gateway``; it holds no module-level
state.  Every error it makes reaches the caller in the OpenAI shape.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote

import orjson

from .._native import RequestIds, finish, valid_request_id
from ..config import Config, ObservabilityConfig, Strategy
from ..errors import (
    AuthUnavailable,
    Forbidden,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from ..observability.access_log import AccessLog
from ..observability.health import Health, Probe
from ..observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..observability.metrics import Metrics
from ..pipeline.capabilities import needs_of
from ..pipeline.iprules import ClientIp
from ..pipeline.ratelimit import Admission, RateLimits
from ..pipeline.rbac import model_not_allowed
from ..pipeline.validate import (
    ChatRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingRequest,
    MessagesRequest,
    ModelRequest,
    decode,
    rename_model,
)
from ..providers import Call, Provider
from ..routing import Deployment, HealthChecker, ModelRoute, Router
from ..upstream import UpstreamClient, UpstreamError
from .admin import mount_admin
from .exchange import ClientGone, Exchange
from .forward import Forwarder, variant_draw
from .forward import gateway_error as _gateway_error
from .messages import Egress, messages_call
from .passthrough import (
    FORWARDED_HEADERS,
    check_batch_upload,
    is_file_upload,
    passthrough_route,
    refuse_unnamed_model,
    relay_raw,
)
from .relay import relay_headers

if TYPE_CHECKING:
    from ..auth.audit import AuditLog
    from ..auth.principal import Principal
    from ..observability.tracing import RequestTrace, Tracing
    from ..pipeline.auth import AuthStage
    from ..resilience.dead_letters import DeadLetters

__all__ = ["Gateway", "create_gateway"]

log = logging.getLogger("sluice.gateway")

JSON = "application/json"
DISCARD_LIMIT = 16 * 2**20  # a refused body is read (and dropped) up to this much before the 413
# On every response; admin answers are never cached.  (No version banner: Granian's server header is "granian".)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (("x-content-type-options", "nosniff"),)
ADMIN_SECURITY_HEADERS = (*SECURITY_HEADERS, ("cache-control", "no-store"))
_AUTH_ERRORS = (Unauthorized, Forbidden, AuthUnavailable)


class RequestContext:
    """What the gateway learns about one request on its way, for headers, metrics, traces and the access log.

    ``Gateway._account`` completes it at the end; the access log's compiled formatter reads its
    slots directly (no per-request copy) to write the request's line.
    """

    __slots__ = (
        "admission",
        "answer",
        "at",
        "cache",
        "error",
        "key_prefix",
        "method",
        "model",
        "overhead_s",
        "path",
        "principal",
        "propagated",
        "provider",
        "request_body",
        "request_id",
        "retries",
        "route",
        "security",
        "served_model",
        "started",
        "status",
        "tokens_in",
        "tokens_out",
        "total_s",
        "trace",
        "traceparent",
        "ttfb_s",
        "ttft_s",
        "upstream_s",
        "upstream_status",
        "usage_asked",
        "user",
        "variant",
        "wire",
    )

    def __init__(self, request_id: str, started: float) -> None:
        self.request_id = request_id
        self.started = started  # perf_counter() at arrival
        self.wire = "openai"  # the caller's wire format, for errors
        self.admission: Admission | None = None  # what the rate limits took
        self.upstream_s = 0.0  # time spent waiting on the upstream
        self.overhead_s = -1.0  # the gateway's own time, once the response head is ready
        self.ttfb_s = -1.0  # arrival to the response head
        self.ttft_s = -1.0  # streams: request sent upstream to its first event
        self.model: str | None = None
        self.provider: str | None = None
        self.upstream_status: int | None = None
        self.error: str | None = None  # the error class, for metrics and logs
        self.answer: bytes | None = None  # the tail of the answer where usage is
        self.request_body: bytes | None = None  # only with observability.log_bodies
        self.trace: RequestTrace | None = None  # the request's spans, when it is traced and sampled
        # Traced but not sampled: the trace context it carries upstream, and its traceparent for the access log
        # (with tracing off, the log takes the caller's).
        self.propagated: list[tuple[str, str]] | None = None
        self.traceparent: str | None = None
        self.usage_asked = False  # the gateway asked the upstream for stream usage the caller did not ask for
        # Set by the stages that know them (authentication, retries, cache) once those land.
        self.key_prefix: str | None = None
        self.user: str | None = None
        self.principal: Principal | None = None  # who is calling, when auth is on (pipeline/auth.py)
        self.security = SECURITY_HEADERS
        self.retries = 0
        self.served_model: str | None = None  # the model whose deployment answered (a fallback's, or an A/B arm's)
        self.variant: str | None = None  # the A/B arm, for models that have variants
        self.cache: str | None = None
        # Filled by Gateway._account:
        self.at = 0.0
        self.method = self.path = self.route = ""
        self.status = 0
        self.total_s = 0.0
        self.tokens_in = self.tokens_out = -1

    def headers(self, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        """Our response headers: request id and the gateway's overhead so far (total minus upstream)."""
        self.ttfb_s = elapsed = time.perf_counter() - self.started
        self.overhead_s = elapsed - self.upstream_s
        headers = [("x-request-id", self.request_id), ("x-sluice-overhead-ms", f"{self.overhead_s * 1000:.3f}"),
                   *self.security, *extra]
        if self.admission is not None:
            headers += self.admission.headers
        return headers


Handler = Callable[[Exchange, RequestContext], Awaitable[None]]
# A model call's route, the route that serves its first attempt (a fallback's when the model's deployments all
# rest), that attempt's deployment, what the request needs from a target, its sticky affinity and region.
_T = TypeVar("_T")
_Plan = tuple[ModelRoute, ModelRoute, Deployment, frozenset[str], str | None, str | None]
_NOTHING: frozenset[str] = frozenset()
_STICKY, _GEO = Strategy.STICKY, Strategy.GEO


class Gateway:
    """Handles Exchanges: request id, routing table, proxying, errors."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config)
        self.max_body = config.server.max_body_bytes
        self.max_response = config.server.max_response_bytes
        self.ids = RequestIds(int.from_bytes(os.urandom(8), "little"))
        self._client: UpstreamClient | None = None
        self.routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": self._proxy_for(ChatRequest, "/v1/chat/completions")},
            "/v1/completions": {"POST": self._proxy_for(CompletionRequest, "/v1/completions")},
            "/v1/embeddings": {"POST": self._proxy_for(EmbeddingRequest, "/v1/embeddings")},
            "/v1/models": {"GET": self._list_models},
            "/v1/messages": {"POST": self._messages},
            "/v1/messages/count_tokens": {"POST": self._count_tokens},
        }
        observability = config.observability
        self.health = Health(self.router, details_token=observability.health_details_token,
                             worker_state=self.worker_state)
        self.access_log = _open_access_log(observability)
        self.metrics = _open_metrics(config)
        self.tracing: Tracing | None = None
        if observability.tracing.enabled:
            from ..observability.tracing import Tracing  # the SDK loads only when tracing is on

            self.tracing = Tracing(observability.tracing)
        self.log_bodies = observability.log_bodies
        self.limits = _open_limits(config, self.metrics)
        # One client-address function (trusted proxies' X-Forwarded-For) for the rate limits and the auth stage.
        self.client_ip = ClientIp(config.ratelimit.trusted_proxies) if self.limits is None else self.limits.client_ip
        self.auth: AuthStage | None = None
        self.audit: AuditLog | None = None
        if config.auth.enabled:
            from ..auth.audit import AuditLog
            from ..pipeline.auth import AuthStage

            self.auth = AuthStage(config, self.client_ip, self.client)
            self.audit = AuditLog(self.auth.store)  # writes through the stage's store; closed before it
        self.admin = mount_admin(config, self.auth, self.audit, self.routes)  # /admin/... when auth is on
        if self.limits is not None and self.limits.redis is not None and self.limits.fails_closed:
            # Only a fail-closed policy stops serving without Redis; otherwise every replica would go
            # unready at once while the fail-open ones could serve.
            self.health.dependencies["redis"] = self.limits.redis.ping
        passthrough = config.passthrough.provider
        self.passthrough_provider = self.router.providers[passthrough] if passthrough is not None else None
        self.keep_answer = self.access_log is not None or self.metrics is not None or self.tracing is not None
        self.dead_letters: DeadLetters | None = None
        if config.resilience.dead_letters.enabled:
            from ..resilience.dead_letters import open_dead_letters

            self.dead_letters = open_dead_letters(config, store=self.auth.store if self.auth is not None else None)
        self.health_checks = HealthChecker(self.router, self.client, config.resilience.health_check)
        self.forwarder = Forwarder(config, self.router, self.client, keep_answer=self.keep_answer,
                                   log_bodies=self.log_bodies, dead_letters=self.dead_letters)
        if self.metrics is not None:
            self.metrics.worker_state = self.worker_state
            self.metrics.counters.update(self.forwarder.counters())
            self.routes["/metrics"] = {"GET": self._scrape}
        for path, probe in self.health.probes().items():
            self.routes[path] = {"GET": self._probe_for(probe)}
        self.open_paths = frozenset({*self.health.probes(), "/metrics"})  # served without a credential
        self._scoped_lists: dict[tuple[tuple[str, ...], tuple[str, ...]], bytes] = {}
        created = int(time.time())
        self._model_cards = {
            name: {"id": name, "object": "model", "created": created, "owned_by": "sluice"}
            for name in config.models
        }
        self._model_list = orjson.dumps({"object": "list", "data": list(self._model_cards.values())})

    # -- dispatch ----------------------------------------------------------------------

    async def handle(self, ex: Exchange) -> None:
        started = time.perf_counter()
        request_id = ex.header("x-request-id")
        if request_id is None or not valid_request_id(request_id):
            request_id = self.ids.next()
        ctx = RequestContext(request_id, started)
        if self.metrics is not None:
            self.metrics.in_flight += 1
        if self.tracing is not None:
            self.tracing.begin(ex, ctx, ex.path if ex.path in self.routes else "other")
        if ex.path.startswith("/admin"):
            ctx.security = ADMIN_SECURITY_HEADERS
        try:
            auth = self.auth
            if auth is not None and ex.path not in self.open_paths:
                if ex.path.startswith("/v1/messages"):
                    ctx.wire = "anthropic"  # a refusal in Anthropic's shape
                if ctx.trace is not None:  # sampled: the stage in a span of its own
                    with ctx.trace.stage("auth"):
                        if not auth.admit(ex, ctx):
                            await auth.admit_slow(ex, ctx)
                elif not auth.admit(ex, ctx):  # no await on a cached key
                    await auth.admit_slow(ex, ctx)
            methods = self.routes.get(ex.path)
            handler = methods.get(ex.method) if methods is not None else None
            await (handler or self._no_route)(ex, ctx)
        except GatewayError as exc:
            ctx.error = exc.code or exc.type
            if self.audit is not None and isinstance(exc, _AUTH_ERRORS):
                self.audit.record("auth.failure", actor=ctx.key_prefix or "anonymous", target=ex.path[:200],
                                  client_ip=self.client_ip(ex), details={"reason": exc.reason, "status": exc.status})
            await self._send_error(ex, ctx, exc)
        except ClientGone:
            ctx.error = "client_disconnected"
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            ctx.error = "internal_error"
            await self._send_error(ex, ctx, GatewayError("The gateway failed to handle the request."))
        finally:
            self._account(ex, ctx)

    def _account(self, ex: Exchange, ctx: RequestContext) -> None:
        """Metrics, trace and access log of a finished request (in a finally: in-flight never leaks)."""
        metrics, access_log, trace = self.metrics, self.access_log, ctx.trace
        if metrics is None and access_log is None and trace is None and ctx.admission is None:
            return
        # Compiled: total and overhead time, status, route, error class, the usage in the answer's tail.
        finish(ctx, ex.status, ex.path, self.routes)
        route, status = ctx.route, ctx.status
        if ctx.admission is not None and self.limits is not None:
            # An embedding's usage has no completion tokens: its prompt tokens are all it used.
            used = ctx.tokens_in + max(ctx.tokens_out, 0) if ctx.tokens_in >= 0 else -1
            if used < 0 and (ctx.upstream_status is None or status >= 400 or passthrough_route(route) is not None):
                # Nothing was generated, or a passthrough answer the gateway does not read for usage:
                # the whole token reservation goes back (requests still count).
                used = 0
            self.limits.settle(ctx.admission, used)
        if metrics is not None:
            metrics.in_flight -= 1
            if metrics.observe_context(ctx, route, status, ctx.total_s):  # compiled: reads the rest of ctx
                metrics.schedule_flush()  # the first request since the last snapshot
        if trace is not None:
            trace.finish(status, ctx.request_id, ctx.model, ctx.error, ctx.tokens_in, ctx.tokens_out)
        # Compiled: completes ctx from ex (end time, method, path, the caller's traceparent), formats its line.
        if access_log is not None and access_log.add(ctx, ex) > 0:
            access_log.schedule_flush()  # the first line since the sink took the last

    async def _no_route(self, ex: Exchange, ctx: RequestContext) -> None:
        """Paths outside the exact table (/v1/models/{id}), unknown paths and wrong methods."""
        path = ex.path
        methods = self.routes.get(path)
        if methods is None:
            if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
                methods = {"GET": self._get_model}
            elif self.admin is not None and (admin_methods := self.admin.routes_for(path)) is not None:
                methods = admin_methods  # /admin/keys/{id}, /admin/keys/{id}/revoke, /admin/users/{id}, ...
            elif (family := passthrough_route(path)) is not None:
                ctx.route = family
                await self._passthrough(ex, ctx)
                return
            else:
                raise NotFound(f"Unknown request URL: {ex.method} {path[:200]}.", code="unknown_url")
        handler = methods.get(ex.method)
        if handler is None:
            allowed = ", ".join(methods)
            raise MethodNotAllowed(f"Method {ex.method} is not allowed on {path}; use {allowed}.",
                                   code="method_not_allowed", headers=(("allow", allowed),))
        await handler(ex, ctx)

    async def _send_error(self, ex: Exchange, ctx: RequestContext, exc: GatewayError) -> None:
        if ex.started:
            return  # the head went out already; a stream ends itself with an error event
        if isinstance(exc, PayloadTooLarge):
            await ex.discard_body(DISCARD_LIMIT)  # so that the 413 is read, not reset away
        headers = ctx.headers(("content-type", JSON), *exc.headers)
        with contextlib.suppress(ClientGone):
            await ex.respond(exc.status, headers, exc.body(ctx.wire))

    # -- health and models -------------------------------------------------------------

    def _probe_for(self, probe: Probe) -> Handler:
        async def answer(ex: Exchange, ctx: RequestContext) -> None:
            status, body = await probe(ex)
            await ex.respond(status, ctx.headers(*self.health.headers()), body)

        return answer

    def worker_state(self) -> dict[str, float]:
        """This worker's pool and queue counters, for the metrics snapshot and /health/details."""
        state: dict[str, float] = {}
        if self._client is not None:
            stats = self._client.stats()
            state["upstream_active"], state["upstream_idle"] = stats["in_use"], stats["idle"]
            state["upstream_waiting"] = stats["waiting"]
        if self.access_log is not None:
            state["access_log_dropped"] = self.access_log.dropped
        if self.tracing is not None:
            state["spans_dropped"] = self.tracing.spans.dropped
        if self.dead_letters is not None:
            state.update(self.dead_letters.stats())
        if self.audit is not None:  # records written and dropped (sluice_audit_*_total), pending
            state.update(self.audit.stats())
        return state

    async def _scrape(self, ex: Exchange, ctx: RequestContext) -> None:
        assert self.metrics is not None
        await ex.respond(200, ctx.headers(("content-type", METRICS_CONTENT_TYPE), ("cache-control", "no-store")),
                         self.metrics.exposition())

    async def _list_models(self, ex: Exchange, ctx: RequestContext) -> None:
        principal = ctx.principal
        body = self._model_list
        if principal is not None and principal.model_globs is not None:  # only the models it may use
            body = self._scoped_lists.get(principal.model_globs)  # type: ignore[assignment]
            if body is None:
                if len(self._scoped_lists) >= 1024:
                    self._scoped_lists.clear()
                cards = [card for name, card in self._model_cards.items() if principal.may_use(name)]
                body = self._scoped_lists[principal.model_globs] = orjson.dumps({"object": "list", "data": cards})
        await ex.respond(200, ctx.headers(("content-type", JSON)), body)

    async def _get_model(self, ex: Exchange, ctx: RequestContext) -> None:
        name = unquote(ex.path[len("/v1/models/"):])
        card = self._model_cards.get(name)
        if card is None or (ctx.principal is not None and not ctx.principal.may_use(name)):
            raise _model_not_found(name)
        await ex.respond(200, ctx.headers(("content-type", JSON)), orjson.dumps(card))

    # -- proxy -------------------------------------------------------------------------

    def _proxy_for(self, kind: type[ModelRequest], endpoint: str) -> Handler:
        return functools.partial(self._proxy, kind=kind, endpoint=endpoint)

    def client(self) -> UpstreamClient:
        """The upstream client of this worker, made on first use inside the running loop."""
        if self._client is None:
            up = self.config.upstream
            self._client = UpstreamClient(
                connect_timeout=up.connect_timeout_s, read_timeout=up.read_timeout_s,
                total_timeout=up.total_timeout_s, max_connections=up.max_connections,
                max_connections_per_origin=up.max_connections_per_origin, idle_timeout=up.idle_timeout_s,
            )
            self.health_checks.start()  # active checks, when configured, from the first request on
        return self._client

    async def _proxy(self, ex: Exchange, ctx: RequestContext, *, kind: type[ModelRequest], endpoint: str) -> None:
        body = await ex.read_body(self.max_body)
        if self.log_bodies:
            ctx.request_body = body
        request: Any = decode(body, kind)
        ctx.model = request.model
        if ctx.principal is not None and (claim := self._authorize_call(ex, ctx, body, request.model)) is not None:
            await claim
        # An unknown model or capability is refused before any charge.
        plan = (self._plan if ctx.trace is None else self._traced_plan)(ex, ctx, request, endpoint)
        limits = self.limits
        if limits is not None:
            admit = _admit(limits, ex, endpoint, request.model, len(body), _max_tokens(request), ctx.principal)
            ctx.admission = await (admit if ctx.trace is None else _in_span(ctx.trace, "rate_limits", admit))
        stream = bool(request.stream)
        # Someone needs the tokens a streaming caller did not ask for: ask for them; the relay hides them.
        ask_usage = stream and (self.keep_answer or ctx.admission is not None) and _usage_unasked(endpoint, request)

        def build(dep: Deployment) -> tuple[Call, None]:
            call = Call(endpoint, "POST", body, stream, ctx.request_id, dep.model)
            ctx.usage_asked = False
            if not dep.provider.translates(call):
                if ask_usage:
                    ctx.usage_asked = True
                    call.body = _asking_usage(body, dep.model if dep.model != request.model else None)
                elif dep.model != request.model:
                    call.body = rename_model(body, dep.model)
            return call, None

        await self.forwarder.serve(ex, ctx, *plan, build, body)

    def _traced_plan(self, ex: Exchange, ctx: RequestContext, request: Any, endpoint: str) -> _Plan:
        """``_plan`` for a sampled request, in a span of its own (not in ``_plan``: a call more for every request)."""
        assert ctx.trace is not None
        with ctx.trace.stage("routing", **{"gen_ai.request.model": str(request.model)[:200]}) as span:
            plan = self._plan(ex, ctx, request, endpoint)
            span.set_attribute("sluice.provider", plan[2].provider.name)
            return plan

    def _plan(self, ex: Exchange, ctx: RequestContext, request: Any, endpoint: str) -> _Plan:
        route = self.router.get(request.model)
        if route is None:
            raise _model_not_found(request.model)
        forwarder = self.forwarder
        affinity = forwarder.affinity(ex, ctx, route) if route.strategy is _STICKY or route.variants else None
        if route.variants:
            route, ctx.variant = route.variant(variant_draw(affinity))
            forwarder.count_variant(request.model, ctx.variant)
        needs = (_NOTHING if route.complete and route.name not in forwarder.needs_checked
                 else needs_of(request, endpoint))
        if needs and (missing := route.missing(needs)):
            raise InvalidRequest(f"No target of model `{route.name}` supports what this request needs: "
                                 f"{', '.join(sorted(missing))}.", param="model", code="unsupported_capability")
        region = forwarder.caller_region(ex, route) if route.strategy is _GEO else None
        serving, first = forwarder.first(route, needs, affinity, region)
        return route, serving, first, needs, affinity, region

    async def _passthrough(self, ex: Exchange, ctx: RequestContext) -> None:
        """Another OpenAI endpoint, relayed to an openai-kind provider as it is (server/passthrough.py)."""
        provider = self.passthrough_provider
        path = safe_path(ex.path)  # refused before a byte is read if it could leave its family
        body: bytes | AsyncIterator[bytes] | None = None
        content_type = ex.header("content-type") or ""
        if ex.method in ("POST", "PUT", "PATCH"):
            media = content_type.split(";", 1)[0].strip().lower()  # media types are case-insensitive
            if not media or media == "application/json":
                body = await ex.read_body(self.max_body)
                if ctx.principal is not None and (claim := self._authorize_call(ex, ctx, body, None)) is not None:
                    await claim  # the model is checked by _passthrough_target
                body, provider = self._passthrough_target(ctx, body, provider)
                if ctx.model is None and ctx.principal is not None and ctx.principal.model_globs is not None:
                    refuse_unnamed_model(ex.method, ex.path, body)  # where the provider would pick the model
            elif (ctx.principal is not None and ctx.principal.model_globs is not None
                  and is_file_upload(ex.method, ex.path)):
                body = await ex.read_body(self.max_body)  # a limited key's batch file: read whole, models checked
                if (claim := self._authorize_call(ex, ctx, body, None)) is not None:
                    await claim
                check_batch_upload(ctx.principal, content_type, body)
            elif (ctx.principal is not None and ctx.principal.model_globs is not None
                  and ex.path in ("/v1/uploads", "/v1/batches")):
                # Their bodies are JSON, checked above: another content type could hide what the check reads.
                await ex.discard_body(DISCARD_LIMIT)
                raise InvalidRequest(f"{ex.path} takes an application/json body, not {media[:100]}.",
                                     code="unsupported_media_type")
            elif (ctx.principal is not None and ctx.principal.model_globs is not None
                  and ctx.route not in ("/v1/files", "/v1/uploads", "/v1/batches")):
                # A form (audio, images) names its model where the gateway does not look: a key limited
                # to some models may not send one. Upload parts name none, and stay allowed.
                await ex.discard_body(DISCARD_LIMIT)  # so that the 403 is read, not reset away
                raise Forbidden(f"This key is limited to certain models, and a {media[:100]} body to {ctx.route} "
                                "cannot be checked for the model it names; such uploads are refused for it.",
                                code="model_not_allowed", reason="model_not_allowed")
            elif ctx.principal is not None and ctx.principal.signing_secret is not None:
                body = await ex.read_body(self.max_body)  # a signed upload is verified whole before it goes on
                if (claim := self._authorize_call(ex, ctx, body, None)) is not None:
                    await claim
            else:
                body = ex.body_chunks(self.max_body)  # uploads go through as they arrive
        if provider is None:
            raise NotFound(f"No provider serves {ex.method} {ex.path[:200]}: name a model with an openai-kind "
                           "target in the body, or set passthrough.provider.", code="unknown_url")
        ctx.provider = provider.name
        if self.limits is not None:  # uploads count as requests; their tokens, if any, settle from usage
            size = len(body) if isinstance(body, bytes) else 0
            admit = _admit(self.limits, ex, ctx.route, ctx.model or "", size, None, ctx.principal)
            ctx.admission = await (admit if ctx.trace is None else _in_span(ctx.trace, "rate_limits", admit))
        target = provider.prefix + path + (f"?{quote(ex.query, safe=_QUERY_SAFE)}" if ex.query else "")
        headers = [(name, value) for name in FORWARDED_HEADERS if (value := ex.header(name)) is not None]
        headers += [("x-request-id", ctx.request_id), *provider.next_auth(), *provider.extra_headers()]
        sent = time.perf_counter()
        try:
            response = await self.client().request(provider.origin, ex.method, target, headers, body)
        except UpstreamError as exc:
            raise _gateway_error(exc, provider.name, ctx.request_id) from None
        finally:
            ctx.upstream_s = time.perf_counter() - sent
        ctx.upstream_status = response.status
        ctx.error = await relay_raw(ex, response, ctx.headers(*relay_headers(response)))

    def _passthrough_target(self, ctx: RequestContext, body: bytes,
                            provider: Provider | None) -> tuple[bytes, Provider | None]:
        """A JSON body that names a configured model goes to that model's openai-kind target, renamed.

        Other model names (tts-1, whisper-1, …) go as they are to the passthrough provider.
        """
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            raise InvalidRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
        model = parsed.get("model") if isinstance(parsed, dict) else None
        if not isinstance(model, str):
            return body, provider
        ctx.model = model
        if ctx.principal is not None and not ctx.principal.may_use(model):
            raise model_not_allowed(model)
        route = self.router.get(model)
        if route is None:
            if provider is None:
                raise _model_not_found(model)
            return body, provider
        target = next((t for t in route.targets if t.provider.kind == "openai"), None)
        if target is None:
            raise InvalidRequest(f"Model `{model}` has no openai-kind target to serve this endpoint.",
                                 param="model", code="unsupported_capability")
        if target.model != model:
            body = rename_model(body, target.model)
        return body, target.provider

    async def _messages(self, ex: Exchange, ctx: RequestContext) -> None:
        """POST /v1/messages: Anthropic's API, natively to anthropic targets, translated to the others."""
        ctx.wire = "anthropic"
        body = await ex.read_body(self.max_body)
        if self.log_bodies:
            ctx.request_body = body
        request: Any = decode(body, MessagesRequest)
        ctx.model = request.model
        if ctx.principal is not None and (claim := self._authorize_call(ex, ctx, body, request.model)) is not None:
            await claim
        plan = (self._plan if ctx.trace is None else self._traced_plan)(ex, ctx, request, "/v1/messages")
        limits = self.limits
        if limits is not None:
            admit = _admit(limits, ex, "/v1/messages", request.model, len(body), request.max_tokens, ctx.principal)
            ctx.admission = await (admit if ctx.trace is None else _in_span(ctx.trace, "rate_limits", admit))
        beta = ex.header("anthropic-beta")

        def build(dep: Deployment) -> tuple[Call, Egress | None]:
            return messages_call(request, body, dep, ctx.request_id, beta)

        await self.forwarder.serve(ex, ctx, *plan, build, body)

    async def _count_tokens(self, ex: Exchange, ctx: RequestContext) -> None:
        """POST /v1/messages/count_tokens: answered by the model's anthropic target."""
        ctx.wire = "anthropic"
        body = await ex.read_body(self.max_body)
        request: Any = decode(body, CountTokensRequest)
        ctx.model = request.model
        if ctx.principal is not None and (claim := self._authorize_call(ex, ctx, body, request.model)) is not None:
            await claim
        route = self.router.get(request.model)
        if route is None:
            raise _model_not_found(request.model)
        dep = next((d for d in route.deployments if d.provider.wire == "anthropic"), None)
        if dep is None:
            raise InvalidRequest(f"Token counting is only offered by anthropic targets, and model "
                                 f"`{route.name}` has none.", param="model", code="unsupported_capability")
        if dep.model != request.model:
            body = rename_model(body, dep.model)
        call = Call("/v1/messages/count_tokens", "POST", body, False, ctx.request_id, dep.model, "anthropic")
        await self.forwarder.forward(ex, ctx, dep, call)

    def _authorize_call(self, ex: Exchange, ctx: RequestContext, body: bytes,
                        model: str | None) -> Coroutine[Any, Any, None] | None:
        """Once the body is read: its signature (keys that sign) and the model (globs of the key and its roles);
        returns the verified signature's claim on Redis, when one is owed, to await before the request goes on."""
        principal = ctx.principal
        assert principal is not None and self.auth is not None
        claim = self.auth.verify_body(ex, ctx, body) if principal.signing_secret is not None else None
        if model is not None and not principal.may_use(model):
            if claim is not None:
                claim.close()  # refused here: nothing to claim
            raise model_not_allowed(model)
        return claim

    async def close(self) -> None:
        """Each part closes even when another fails: quota usage flushed, logs written, connections closed."""
        parts = [self.dead_letters.aclose() if self.dead_letters is not None else None,  # before the store closes
                 self.audit.aclose() if self.audit is not None else None,  # before the stage closes the store
                 self.health_checks.aclose(),
                 self.auth.aclose() if self.auth is not None else None,
                 self._client.close() if self._client is not None else None,
                 self.limits.aclose() if self.limits is not None else None]
        for part in parts:
            if part is None:
                continue
            try:
                await part
            except Exception:
                log.exception("closing the gateway")
        self.close_logs()

    def close_logs(self) -> None:
        """Writes the access-log lines and exports the spans still queued (at shutdown)."""
        if self.access_log is not None:
            self.access_log.close()
        if self.tracing is not None:
            self.tracing.close()


def _open_metrics(config: Config) -> Metrics | None:
    if not config.observability.metrics:
        return None
    # `sluice serve` gives its workers one shared directory; another server gets one per process.
    directory = os.environ.get("SLUICE_METRICS_DIR") or tempfile.mkdtemp(prefix="sluice-metrics-")
    return Metrics(directory, config.models, provider_kinds={name: p.kind for name, p in config.providers.items()})


def _open_limits(config: Config, metrics: Metrics | None) -> RateLimits | None:
    limits = config.ratelimit
    keys_carry_limits = config.auth.enabled  # a key in the store may come with its own policies and quotas
    if not limits.policies and not limits.quotas and not keys_carry_limits:
        return None
    redis = None
    if limits.redis is not None:
        from ..state.redis_limits import RedisLimiter, connect  # loaded only when Redis is configured

        redis = RedisLimiter(connect(limits.redis, limits.redis_timeout_s), timeout_s=limits.redis_timeout_s)
    quotas = None
    if limits.quotas or keys_carry_limits:
        from ..pipeline.quotas import Quotas
        from ..state.quota_store import open_quota_store

        quotas = Quotas(limits, open_quota_store(limits))
    rate_limits = RateLimits(limits, redis, quotas)
    if metrics is not None:
        metrics.counters["sluice_ratelimit_decisions"] = (
            "Rate-limit decisions by policy: admitted, rejected, warned, redis_unavailable, overflow.",
            ("policy", "decision"), rate_limits.decision_counts)
        if quotas is not None:
            metrics.counters["sluice_quota_decisions"] = (
                "Quota decisions by quota: admitted, rejected, store_unavailable, evicted, unrecorded.",
                ("quota", "decision"), quotas.decision_counts)
    return rate_limits


def _usage_unasked(endpoint: str, request: Any) -> bool:
    """A chat request whose caller did not ask for its stream's usage (stream_options.include_usage)."""
    if endpoint != "/v1/chat/completions":
        return False
    options = request.stream_options
    return options is None or options.include_usage is not True


def _asking_usage(body: bytes, model: str | None) -> bytes:
    """A chat body with stream_options.include_usage on (and renamed to ``model`` unless None).

    Without a rename or a stream_options key of its own (the usual case) the key is appended to the
    object as it is, every byte kept; otherwise the body is parsed once and the options merged.
    """
    if model is None and b'"stream_options"' not in body:
        head = body.rstrip()
        if head.endswith(b"}"):
            head = head[:-1].rstrip()
            return head + (b'"stream_options":{"include_usage":true}}' if head.endswith(b"{") else
                           b',"stream_options":{"include_usage":true}}')
    data = orjson.loads(body)
    if model is not None:
        data["model"] = model
    options = data.get("stream_options")
    data["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps(data)


async def _in_span(trace: RequestTrace, stage: str, work: Awaitable[_T]) -> _T:
    """``work`` awaited in a child span of the request's (a sampled one)."""
    with trace.stage(stage):
        return await work


async def _admit(limits: RateLimits, ex: Exchange, route: str, model: str, body_size: int,
                 max_tokens: int | None, caller: Principal | None = None) -> Admission | None:
    """The rate limits' and quotas' admission: without an await when nothing needs Redis or a store."""
    if not limits.remote:
        admission = limits.admit_local(ex, route, model, body_size, max_tokens, caller)
        if admission != "await":
            return admission
    return await limits.admit(ex, route, model, body_size, max_tokens, caller)


def _max_tokens(request: Any) -> int | None:
    if isinstance(request, EmbeddingRequest):
        return 0  # an embedding generates nothing: its reservation is its input
    value = getattr(request, "max_completion_tokens", None) or getattr(request, "max_tokens", None)
    return value if isinstance(value, int) else None


def _open_access_log(config: ObservabilityConfig) -> AccessLog | None:
    if not config.access_log:
        return None
    # Line-buffered text would flush per line; the writer thread batches, so a plain binary file.
    sink = open(config.access_log_path, "ab") if config.access_log_path else None  # noqa: SIM115
    return AccessLog(sink, queue_size=config.access_log_queue, sample_success=config.sample_success,
                     log_bodies=config.log_bodies)


_PATH_SAFE = "/-._~:@!$&'()*+,;="
_QUERY_SAFE = _PATH_SAFE + "=?&%"


def safe_path(path: str) -> str:
    """The caller's (decoded) path, re-encoded for the upstream request line; 404 for one that tries to
    leave its endpoint family (dot segments) or carries control characters."""
    if any(segment in (".", "..") for segment in path.split("/")) or any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise NotFound(f"Unknown request URL: {quote(path[:200], safe=_PATH_SAFE)}.", code="unknown_url")
    return quote(path, safe=_PATH_SAFE)


def _model_not_found(name: str) -> NotFound:
    return NotFound(f"The model `{name[:200]}` does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def create_gateway(config: Config) -> Gateway:
    return Gateway(config)

