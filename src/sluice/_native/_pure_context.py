"""Pure-Python twin of ext/_context.pyx: the request context (same fields, same methods)."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["SECURITY_HEADERS", "RequestContext"]

# On every response.  (No version banner: Granian's server header is "granian".)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (("x-content-type-options", "nosniff"),)


class RequestContext:
    """What the gateway learns about one request on its way through its stages.

    The stages write it and read it (sluice.pipeline.stage); headers, metrics, traces and the
    access log read it at the end.  The compiled twin declares the same fields in ext/_context.pxd,
    which the compiled metrics, access-log and accounting code reads directly.
    """

    __slots__ = (
        "admission",
        "answer",
        "at",
        "body",
        "cache",
        "credential",
        "error",
        "key_prefix",
        "method",
        "model",
        "overhead_s",
        "path",
        "plan",
        "principal",
        "propagated",
        "provider",
        "request",
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

    def __init__(self, request_id: str, started: float, route: str = "") -> None:
        self.request_id = request_id
        self.started = started  # perf_counter() at arrival
        self.route = route  # the route's name, for metrics and logs ("other" for paths outside the table)
        self.wire = "openai"  # the caller's wire format, for errors
        self.credential: str | None = None  # the caller's key or token as presented (pipeline.auth.credential)
        self.body: bytes | None = None  # the request body, once a stage read it whole
        self.request: Any = None  # the body decoded (pipeline.validate), for the stages after
        self.plan: Any = None  # the routing decision (sluice.routing.plan.Plan)
        self.admission: Any = None  # what the rate limits took (pipeline.ratelimit.Admission)
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
        self.trace: Any = None  # the request's spans, when it is traced and sampled (observability.tracing)
        # Traced but not sampled: the trace context it carries upstream, and its traceparent for the access log
        # (with tracing off, the log takes the caller's).
        self.propagated: list[tuple[str, str]] | None = None
        self.traceparent: str | None = None
        self.usage_asked = False  # the gateway asked the upstream for stream usage the caller did not ask for
        self.key_prefix: str | None = None  # what the logs show of the caller's key
        self.user: str | None = None
        self.principal: Any = None  # who is calling, when auth is on (sluice.auth.principal.Principal)
        self.security = SECURITY_HEADERS
        self.retries = 0
        self.served_model: str | None = None  # the model whose deployment answered (a fallback's, or an A/B arm's)
        self.variant: str | None = None  # the A/B arm, for models that have variants
        self.cache: str | None = None
        # Filled when the request ends (finish, the access log):
        self.at = 0.0
        self.method = self.path = ""
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
