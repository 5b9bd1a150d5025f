"""The route table: each route's pipeline of stages, built once from the config.

A route's stages, in order (absent when not configured):

    access_log → metrics → tracing                      the frame: every route
    admin_headers                                       admin routes (answers never cached)
    ip_reputation                                       where auth goes, with auth or without (abuse.reputation)
    auth (IP rules, credential, RBAC on the route)      every route but the health probes and /metrics
      or pow, with auth off                             (abuse.pow)
    decode → model_access → anomaly → routing → rate_limits   model routes (anomaly: abuse.anomaly)
    the endpoint                                        the stage that answers

``RouteTable.resolve`` picks a request's pipeline: an exact path and method, the path's 405, a
passthrough family, else the pipeline of unknown paths (model cards, admin paths with ids, 404).
``sluice routes --config FILE`` prints ``RouteTable.describe()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..context import ADMIN_SECURITY_HEADERS, Exchange, RequestContext
from ..errors import AuthUnavailable, Forbidden, GatewayError, Unauthorized
from ..observability.stages import AccessLogStage, MetricsStage, TracingStage
from ..pipeline.abuse import AbuseStages
from ..pipeline.admission import AdmissionStage
from ..pipeline.auth import ModelAccess
from ..pipeline.stage import Pipeline, Stage, Traced
from ..pipeline.validate import (
    ChatRequest,
    CompletionRequest,
    CountTokensRequest,
    DecodeStage,
    EmbeddingRequest,
    MessagesRequest,
    ModelRequest,
)
from ..routing.plan import RoutingStage
from .endpoints import CountTokensCall, CountTokensRouting, Endpoint, MessagesCall, ModelCall, NotAllowed, Unknown
from .openapi import OPENAPI_PATH, OpenApi
from .passthrough import FAMILIES, PassthroughRelay, PassthroughRequest

if TYPE_CHECKING:
    from .app import Gateway

__all__ = ["RouteTable", "build_routes"]

_AUTH_ERRORS = (Unauthorized, Forbidden, AuthUnavailable)
MODEL_ENDPOINTS: dict[str, type[ModelRequest]] = {
    "/v1/chat/completions": ChatRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}


class AdminHeaders(Stage):
    """Admin answers (refusals included) are never cached."""

    name = "admin_headers"

    def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        ctx.security = ADMIN_SECURITY_HEADERS


class RouteTable:
    """path → method → pipeline, and the pipelines of the paths outside it."""

    def __init__(self, exact: dict[str, dict[str, Pipeline]], not_allowed: dict[str, Pipeline],
                 families: dict[str, Pipeline], unknown: dict[str, Pipeline]) -> None:
        self.exact = exact
        self.not_allowed = not_allowed
        self.families = families  # passthrough families
        self.unknown = unknown  # "openai", "anthropic" (paths under /v1/messages), "admin"

    def resolve(self, path: str, method: str) -> Pipeline:
        methods = self.exact.get(path)
        if methods is not None:
            return methods.get(method) or self.not_allowed[path]
        for prefix, pipeline in self.families.items():
            if path == prefix or path.startswith(prefix + "/"):
                return pipeline
        if path.startswith("/admin"):
            return self.unknown["admin"]
        return self.unknown["anthropic" if path.startswith("/v1/messages") else "openai"]

    def describe(self) -> list[str]:
        """Each route with its stages in order, for ``sluice routes``."""
        lines: list[str] = []

        def add(title: str, pipeline: Pipeline) -> None:
            lines.append(title)
            lines.extend(f"    {i}. {line}" for i, line in enumerate(pipeline.describe(), 1))

        for path, methods in self.exact.items():
            for method, pipeline in methods.items():
                add(f"{method} {path}", pipeline)
        for prefix, pipeline in self.families.items():
            add(f"* {prefix}/... (passthrough)", pipeline)
        add("* any other path (/v1/models/{id}, else 404)", self.unknown["openai"])
        add("* /v1/messages/... (404 in Anthropic's format)", self.unknown["anthropic"])
        if self.unknown["admin"] is not self.unknown["openai"]:
            add("* /admin/... with an id (/admin/keys/{id}, /admin/users/{id}, ...)", self.unknown["admin"])
        for path, pipeline in self.not_allowed.items():
            add(f"* {path} with another method (405)", pipeline)
        return lines


def build_routes(gw: Gateway) -> RouteTable:
    """Every route's pipeline from the gateway's parts (built from the config: absent parts, absent stages)."""
    frame: list[Stage] = []
    if gw.access_log is not None:
        frame.append(AccessLogStage(gw.access_log))
    if gw.metrics is not None:
        frame.append(MetricsStage(gw.metrics))
    if gw.tracing is not None:
        frame.append(TracingStage(gw.tracing))

    def traced(stage: Stage, attributes: Callable[[RequestContext], dict[str, object]] | None = None) -> Stage:
        return Traced(stage, attributes) if gw.tracing is not None else stage

    # abuse.* (pipeline/abuse.py): reputation before auth; proof of work in its place when auth is off; anomaly
    # after the model check when it is on.  Each absent when not configured.
    abuse = AbuseStages(gw.config, gw.client_ip, audit=gw.audit.record if gw.audit is not None else None,
                        metrics=gw.metrics)
    guard: list[Stage] = [*abuse.screen, *([traced(gw.auth)] if gw.auth is not None else abuse.challenge)]
    access: list[Stage] = [ModelAccess(gw.auth), *abuse.keys] if gw.auth is not None else []
    admit: list[Stage] = [traced(AdmissionStage(gw.limits))] if gw.limits is not None else []
    audit = gw.audit_failure if gw.audit is not None else None
    max_body, log_bodies = gw.max_body, gw.log_bodies

    def pipeline(route: str, stages: Sequence[Stage], wire: str = "openai") -> Pipeline:
        return Pipeline(route, [*frame, *stages], wire=wire, audit=audit)

    def model_route(endpoint: str, kind: type[ModelRequest], call: Stage, wire: str = "openai") -> Pipeline:
        return pipeline(endpoint, [*guard, DecodeStage(kind, max_body, log_bodies=log_bodies), *access,
                                   traced(RoutingStage(gw.planner, endpoint), RoutingStage.span_attributes),
                                   *admit, call], wire)

    exact: dict[str, dict[str, Pipeline]] = {
        endpoint: {"POST": model_route(endpoint, kind, ModelCall(gw.attempts, endpoint, keep_answer=gw.keep_answer))}
        for endpoint, kind in MODEL_ENDPOINTS.items()
    }
    exact["/v1/messages"] = {"POST": model_route("/v1/messages", MessagesRequest, MessagesCall(gw.attempts),
                                                 "anthropic")}
    exact["/v1/messages/count_tokens"] = {"POST": pipeline(
        "/v1/messages/count_tokens",
        [*guard, DecodeStage(CountTokensRequest, max_body, log_bodies=log_bodies), *access,
         traced(CountTokensRouting(gw.router)), *admit, CountTokensCall(gw.attempts)], "anthropic")}
    exact["/v1/models"] = {"GET": pipeline("/v1/models", [*guard, Endpoint("models", gw.list_models)])}
    open_routes: dict[str, Endpoint] = {path: Endpoint(path.strip("/").replace("/", "_"), gw.probe_handler(probe))
                                        for path, probe in gw.health.probes().items()}
    if gw.metrics is not None:
        open_routes["/metrics"] = Endpoint("scrape", gw.scrape)
    openapi = OpenApi()  # the document of this table (server/openapi.py), handed the table once it is built
    open_routes[OPENAPI_PATH] = Endpoint("openapi", openapi.serve)
    for path, endpoint in open_routes.items():  # served without a credential
        exact[path] = {"GET": pipeline(path, [endpoint])}
    admin = gw.admin
    for path, methods in gw.admin_routes.items():
        exact[path] = {method: pipeline(path, [AdminHeaders(), *guard, Endpoint("admin", handler)])
                       for method, handler in methods.items()}
    not_allowed = {path: pipeline(path, [*([AdminHeaders()] if path.startswith("/admin") else []),
                                         *([] if path in open_routes else guard), NotAllowed(list(methods))],
                                  "anthropic" if path.startswith("/v1/messages") else "openai")
                   for path, methods in exact.items()}
    passthrough = [PassthroughRequest(gw.router, gw.passthrough_provider, max_body, gw.auth), *abuse.keys,
                   *([traced(AdmissionStage(gw.limits, reads_usage=False))] if gw.limits is not None else []),
                   PassthroughRelay(gw.client)]
    families = {prefix: pipeline(prefix, [*guard, *passthrough]) for prefix in FAMILIES}
    dispatch = Unknown(gw.get_model, admin.routes_for if admin is not None else None)
    unknown = {"openai": pipeline("other", [*guard, dispatch]),
               "anthropic": pipeline("other", [*guard, dispatch], "anthropic")}
    # With the admin API, its paths with ids answer (or refuse) with the admin headers; without, they are unknown.
    unknown["admin"] = pipeline("other", [AdminHeaders(), *guard, dispatch]) if admin is not None else unknown["openai"]
    openapi.table = table = RouteTable(exact, not_allowed, families, unknown)
    return table


def audit_refusal(record: Callable[..., None], client_ip: Callable[[Exchange], str]
                  ) -> Callable[[Exchange, RequestContext, GatewayError], None]:
    """The pipelines' record of refused authentication and RBAC, for the audit log."""
    def audit(ex: Exchange, ctx: RequestContext, exc: GatewayError) -> None:
        if isinstance(exc, _AUTH_ERRORS):
            record("auth.failure", actor=ctx.key_prefix or "anonymous", target=ex.path[:200],
                   client_ip=client_ip(ex), details={"reason": exc.reason, "status": exc.status})

    return audit
