"""The gateway: its parts built once per config snapshot, and each request dispatched to its route's pipeline.

``create_gateway`` builds it; it holds no module-level state.  The pipelines of stages are in
server/routes.py (``sluice routes`` prints them), the stages themselves in pipeline/, routing/,
resilience/ and observability/.  Every error reaches the caller in its wire format.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from .._native import RequestIds, valid_request_id
from ..admin import mount_admin
from ..auth.iprules import ClientIp
from ..config import Config, ObservabilityConfig
from ..context import Exchange, Handler, RequestContext
from ..observability.access_log import AccessLog
from ..observability.health import Health, Probe
from ..observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..observability.metrics import Metrics
from ..pipeline.ratelimit import RateLimits
from ..resilience.attempts import Attempts
from ..routing import HealthChecker, Router
from ..routing.plan import Planner, model_not_found
from ..upstream import UpstreamClient
from .forward import Sender
from .routes import RouteTable, audit_refusal, build_routes

if TYPE_CHECKING:
    from ..auth.audit import AuditLog
    from ..observability.tracing import Tracing
    from ..pipeline.auth import AuthStage
    from ..resilience.dead_letters import DeadLetters

__all__ = ["Gateway", "create_gateway"]

log = logging.getLogger("sluice.gateway")

JSON = "application/json"


class Gateway:
    """The parts of one worker's gateway, and ``handle``: a request to its route's pipeline."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config)
        self.max_body = config.server.max_body_bytes
        self.ids = RequestIds(int.from_bytes(os.urandom(8), "little"))
        self._client: UpstreamClient | None = None
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
        self.audit_failure = None
        if config.auth.enabled:
            from ..auth.audit import AuditLog
            from ..pipeline.auth import AuthStage

            self.auth = AuthStage(config, self.client_ip, self.client)
            self.audit = AuditLog(self.auth.store)  # writes through the stage's store; closed before it
            self.audit_failure = audit_refusal(self.audit.record, self.client_ip)
        self.admin_routes: dict[str, dict[str, Handler]] = {}  # /admin/... when auth is on
        self.admin = mount_admin(config, self.auth, self.audit, self.admin_routes)
        _depend(self.health, self.limits, self.auth, config)
        passthrough = config.passthrough.provider
        self.passthrough_provider = self.router.providers[passthrough] if passthrough is not None else None
        self.keep_answer = self.access_log is not None or self.metrics is not None or self.tracing is not None
        self.dead_letters: DeadLetters | None = None
        if config.resilience.dead_letters.enabled:
            from ..resilience.dead_letters import open_dead_letters

            self.dead_letters = open_dead_letters(config, store=self.auth.store if self.auth is not None else None)
        self.health_checks = HealthChecker(self.router, self.client, config.resilience.health_check)
        self.planner = Planner(self.router)
        self.sender = Sender(config, self.client, keep_answer=self.keep_answer, log_bodies=self.log_bodies)
        self.attempts = Attempts(config, self.planner, self.client, self.sender, dead_letters=self.dead_letters)
        if self.metrics is not None:
            self.metrics.worker_state = self.worker_state
            self.metrics.counters.update(self.attempts.counters())
        self._scoped_lists: dict[tuple[tuple[str, ...], tuple[str, ...]], bytes] = {}
        created = int(time.time())
        self._model_cards = {
            name: {"id": name, "object": "model", "created": created, "owned_by": "sluice"}
            for name in config.models
        }
        self._model_list = orjson.dumps({"object": "list", "data": list(self._model_cards.values())})
        self.routes: RouteTable = build_routes(self)

    def handle(self, ex: Exchange) -> Coroutine[Any, Any, None]:
        """The request's id (the caller's x-request-id when it is a sane one), then its route's pipeline (a plain
        function returning the pipeline's coroutine: one coroutine level less per request)."""
        started = time.perf_counter()
        request_id = ex.header("x-request-id")
        if request_id is None or not valid_request_id(request_id):
            request_id = self.ids.next()
        pipeline = self.routes.resolve(ex.path, ex.method)
        return pipeline.run(ex, RequestContext(request_id, started, pipeline.route))

    # -- the endpoints that answer from the gateway itself ------------------------------

    def probe_handler(self, probe: Probe) -> Handler:
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
        if self.auth is not None:  # key lookups, the known-key filter, store calls, per-address failures
            state.update(self.auth.stats())
        return state

    async def scrape(self, ex: Exchange, ctx: RequestContext) -> None:
        assert self.metrics is not None
        await ex.respond(200, ctx.headers(("content-type", METRICS_CONTENT_TYPE), ("cache-control", "no-store")),
                         self.metrics.exposition())

    async def list_models(self, ex: Exchange, ctx: RequestContext) -> None:
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

    async def get_model(self, ex: Exchange, ctx: RequestContext) -> None:
        name = unquote(ex.path[len("/v1/models/"):])
        card = self._model_cards.get(name)
        if card is None or (ctx.principal is not None and not ctx.principal.may_use(name)):
            raise model_not_found(name)
        await ex.respond(200, ctx.headers(("content-type", JSON)), orjson.dumps(card))

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
        if self.metrics is not None:  # what was counted since the last snapshot (at most a second's worth)
            try:
                self.metrics.flush()
            except OSError:
                log.exception("writing the last metrics snapshot")
        self.close_logs()

    def close_logs(self) -> None:
        """Writes the access-log lines and exports the spans still queued (at shutdown)."""
        if self.access_log is not None:
            self.access_log.close()
        if self.tracing is not None:
            self.tracing.close()


def _depend(health: Health, limits: RateLimits | None, auth: AuthStage | None, config: Config) -> None:
    """The dependencies readiness pings (observability/health.py): required ones make it 503 when down."""
    if auth is not None:
        if auth.store is not None:
            health.depend("store", auth.store.ping, required=True, needed_for="API keys not cached yet")
        if auth.notices is not None:
            fail_closed = config.auth.signature_fail_closed
            health.depend("auth_redis", auth.notices.ping, required=fail_closed,
                          needed_for="signed requests (fail closed)" if fail_closed else
                          "change notices and shared replay checks (polling and per-worker checks stand in)")
    if limits is not None and limits.redis is not None:
        # Only a fail-closed policy stops serving without Redis; otherwise every replica would go
        # unready at once while the fail-open ones could serve.
        health.depend("redis", limits.redis.ping, required=limits.fails_closed,
                      needed_for="fail-closed rate limits" if limits.fails_closed else
                      "rate limits (fail-open: local buckets stand in)")


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
        from ..state.redis import connect  # loaded only when Redis is configured
        from ..state.redis_limits import RedisLimiter

        client = connect(limits.redis, timeout_s=limits.redis_timeout_s, name="ratelimit")
        redis = RedisLimiter(client, timeout_s=limits.redis_timeout_s)
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


def _open_access_log(config: ObservabilityConfig) -> AccessLog | None:
    if not config.access_log:
        return None
    # Line-buffered text would flush per line; the writer thread batches, so a plain binary file.
    sink = open(config.access_log_path, "ab") if config.access_log_path else None  # noqa: SIM115
    return AccessLog(sink, queue_size=config.access_log_queue, sample_success=config.sample_success,
                     log_bodies=config.log_bodies)


def create_gateway(config: Config) -> Gateway:
    return Gateway(config)

