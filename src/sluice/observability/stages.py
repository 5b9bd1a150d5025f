"""The observability stages: the access log, the metrics and the trace of every request.

They come first in a route's pipeline so that their response steps run last, once every other
stage has settled: the access log outermost (its line carries everything), then the metrics, then
the trace.  Each is in the pipeline only when configured (server/routes.py).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ..context import Exchange, RequestContext
from ..pipeline.stage import Stage

if TYPE_CHECKING:
    from .access_log import AccessLog
    from .metrics import Metrics
    from .tracing import Tracing

__all__ = ["AccessLogStage", "MetricsStage", "TracingStage"]


class AccessLogStage(Stage):
    """One JSON line per request, formatted by compiled code from the context (observability.access_log)."""

    name = "access_log"

    def __init__(self, access_log: AccessLog) -> None:
        self.access_log = access_log
        self._add = access_log.add

    def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        return None

    def on_response(self, ex: Exchange, ctx: RequestContext) -> None:
        # Compiled: completes ctx from ex (end time, method, path, the caller's traceparent), formats its line.
        if self._add(ctx, ex) > 0:
            self.access_log.schedule_flush()  # the first line since the sink took the last


class MetricsStage(Stage):
    """Requests in flight, then the request's counts and durations (observability.metrics)."""

    name = "metrics"

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._observe = metrics.observe_context

    def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        self.metrics.in_flight += 1

    def on_response(self, ex: Exchange, ctx: RequestContext) -> None:
        metrics = self.metrics
        metrics.in_flight -= 1
        if self._observe(ctx, ctx.route, ctx.status, ctx.total_s):  # compiled: reads the rest of ctx
            metrics.schedule_flush()  # the first request since the last snapshot


class TracingStage(Stage):
    """The request's trace: sampled ones get spans (``ctx.trace``), the others a traceparent carried upstream and
    logged (observability.tracing).  The stages worth a span of their own are wrapped in ``Traced``."""

    name = "tracing"

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self.on_request = tracing.begin  # type: ignore[method-assign]  # the step itself: one call less a request

    def on_request(self, ex: Exchange, ctx: RequestContext) -> Awaitable[Any] | None:
        self.tracing.begin(ex, ctx)  # bound in its place by __init__: this is what it does
        return None

    def on_response(self, ex: Exchange, ctx: RequestContext) -> None:
        trace = ctx.trace
        if trace is not None:
            trace.finish(ctx.status, ctx.request_id, ctx.model, ctx.error, ctx.tokens_in, ctx.tokens_out)

    def describe(self) -> str:
        return f"tracing (sample_ratio {self.tracing.ratio})"
