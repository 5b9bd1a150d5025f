"""OpenTelemetry traces: a span per request, child spans per stage and upstream attempt, OTLP/HTTP export.

The gateway imports this module only when ``observability.tracing.enabled`` is
set, so with tracing off neither the SDK is loaded nor does a request pay more
than one ``is None`` check.  The tracer provider belongs to the gateway, not to the
process-global OpenTelemetry API: two gateways in one process never share it.

Sampling is parent-based: a caller's W3C ``traceparent`` decides for its trace
(a malformed one is ignored and never echoed), and a new trace is sampled at
``sample_ratio``.  The decision is made here, before the SDK is touched: an
unsampled request gets no trace object at all, only the ``traceparent`` (its
trace id, a fresh span id, compiled: ``TraceIds``) and the caller's
``tracestate`` that it carries upstream (``ctx.propagated``) and logs
(``ctx.traceparent``); the SDK's non-recording spans would cost tens of
microseconds, and even a Python object with no-op methods cost ~14,000
instructions a request in calls and id formatting.  A sampled request gets SDK
spans (``RequestTrace``): the server span, a child span per pipeline stage
(``stage``: auth, rate limits, routing) and one per upstream attempt.  Either
way the upstream request carries the trace's context, so the provider's spans
join the caller's trace.

Export runs in one thread through a bounded queue (``SpanQueue``): a
collector that is down, slow or refusing costs dropped spans, counted, never a
slower request.  The SDK's own batch processor logs a warning for every span it
drops and does not count them, which is what a saturated gateway cannot afford.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..config.extras import missing_extra

try:
    from opentelemetry.context import Context
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # the otel extra is not installed: say which, not a traceback
    raise missing_extra("otel", "observability.tracing.enabled") from exc

from .._native import TraceIds
from ..config import TracingConfig
from ..errors import GatewayError
from ..traceparent import parse_traceparent

if TYPE_CHECKING:
    from ..context import Exchange, RequestContext

__all__ = ["RequestTrace", "SpanQueue", "Tracing"]

log = logging.getLogger("sluice.tracing")


class Tracing:
    """The gateway's tracer: one per worker, built from the config."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        if exporter is None:
            exporter = OTLPSpanExporter(endpoint=config.endpoint, headers=dict(config.headers),
                                        timeout=config.timeout_s)
        self.spans = SpanQueue(exporter, queue_size=config.queue_size, batch_size=config.batch_size,
                               interval_s=config.flush_interval_s)
        # Only sampled requests reach the SDK (see begin), so it records whatever it is given.
        self._provider = TracerProvider(sampler=ParentBased(ALWAYS_ON),
                                        resource=Resource.create({"service.name": config.service_name}))
        self._provider.add_span_processor(self.spans)
        self.tracer = self._provider.get_tracer("sluice")
        self.propagator = TraceContextTextMapPropagator()

        self.ratio = config.sample_ratio
        self.ids = TraceIds(int.from_bytes(os.urandom(8), "little"))  # made in the worker: ids of its own

    def begin(self, ex: Exchange, ctx: RequestContext) -> None:
        """Starts the request's trace (the tracing stage's request step): its spans in ``ctx.trace`` when it is
        sampled (a caller's sampled ``traceparent``, or a new trace drawn under ``sample_ratio``); else the context
        it carries upstream in ``ctx.propagated`` and logs in ``ctx.traceparent``."""
        header = ex.header("traceparent")
        parent = parse_traceparent(header) if header is not None else None
        if parent is None:  # none, or malformed (ignored): a new trace
            traceparent = self.ids.new_trace(self.ratio)
            if traceparent is None:
                ctx.trace = RequestTrace(self, ex, ctx.route)
                return
            ctx.propagated = [("traceparent", traceparent)]
        elif parent[2]:
            ctx.trace = RequestTrace(self, ex, ctx.route)
            return
        else:
            traceparent = self.ids.child(parent[0])
            tracestate = ex.header("tracestate")
            ctx.propagated = [("traceparent", traceparent), ("tracestate", tracestate)] if tracestate else [
                ("traceparent", traceparent)]
        ctx.traceparent = traceparent

    def close(self, timeout_s: float = 2.0) -> None:
        """Exports what is queued (waiting at most ``timeout_s``) and stops the export thread."""
        self.spans.shutdown(timeout_s)


class _ExchangeHeaders:
    """The propagator's view of a request's headers."""

    @staticmethod
    def get(carrier: Exchange, key: str) -> list[str] | None:
        value = carrier.header(key)
        return None if value is None else [value]

    @staticmethod
    def keys(carrier: Exchange) -> list[str]:
        return ["traceparent", "tracestate"]


_GETTER = _ExchangeHeaders()


class RequestTrace:
    """The spans of one request: the server span, stage spans and upstream attempt spans."""

    __slots__ = ("_tracing", "context", "span", "upstream")

    def __init__(self, tracing: Tracing, ex: Exchange, route: str) -> None:
        self._tracing = tracing
        parent = tracing.propagator.extract(ex, getter=_GETTER)  # type: ignore[arg-type]
        self.span: Span = tracing.tracer.start_span(
            f"{ex.method} {route}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": ex.method, "http.route": route, "url.path": ex.path[:200]},
        )
        self.context: Context = set_span_in_context(self.span)
        self.upstream: Span | None = None

    @property
    def trace_id(self) -> str:
        return f"{self.span.get_span_context().trace_id:032x}"

    @contextlib.contextmanager
    def stage(self, name: str, **attributes: Any) -> Iterator[Span]:
        """A child span around a pipeline stage; an error leaving the stage marks it with its class (a
        GatewayError's code, as the access log has it)."""
        span = self._tracing.tracer.start_span(name, context=self.context, attributes=attributes,
                                               record_exception=False, set_status_on_exception=False)
        try:
            yield span
        except BaseException as exc:
            _error(span, (exc.code or exc.type) if isinstance(exc, GatewayError) else type(exc).__name__)
            raise
        finally:
            span.end()

    def start_upstream(self, operation: str, model: str, provider_kind: str, provider_name: str,
                       server: str) -> list[tuple[str, str]]:
        """Starts an upstream attempt's span; returns the headers that carry it to the provider."""
        self.end_upstream(None)  # a retry ends the previous attempt
        self.upstream = span = self._tracing.tracer.start_span(
            f"{operation} {model}", context=self.context, kind=SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": operation, "gen_ai.request.model": model,
                        "gen_ai.system": provider_kind, "gen_ai.provider.name": provider_kind,
                        "sluice.provider": provider_name, "server.address": server},
        )
        carrier: dict[str, str] = {}
        self._tracing.propagator.inject(carrier, context=set_span_in_context(span))
        return list(carrier.items())

    def end_upstream(self, status: int | None, tokens_in: int = -1, tokens_out: int = -1,
                     error: str | None = None) -> None:
        span, self.upstream = self.upstream, None
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        _usage(span, tokens_in, tokens_out)
        _error(span, error or (f"upstream_{status // 100}xx" if status is not None and status >= 500 else None))
        span.end()

    def finish(self, status: int, request_id: str, model: str | None, error: str | None, tokens_in: int,
               tokens_out: int) -> None:
        span = self.span
        self.end_upstream(None, error=error)
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("sluice.request_id", request_id)
        if model is not None:
            span.set_attribute("gen_ai.request.model", model[:200])
        _usage(span, tokens_in, tokens_out)
        _error(span, error if error is not None or status < 500 else "internal_error")
        span.end()



def _usage(span: Span, tokens_in: int, tokens_out: int) -> None:
    if tokens_in >= 0:
        span.set_attribute("gen_ai.usage.input_tokens", tokens_in)
    if tokens_out >= 0:
        span.set_attribute("gen_ai.usage.output_tokens", tokens_out)


def _error(span: Span, error: str | None) -> None:
    if error is None:
        return
    span.set_attribute("error.type", error)
    span.set_status(Status(StatusCode.ERROR, error))


class SpanQueue(SpanProcessor):
    """A span processor: finished sampled spans go to a bounded queue, one thread exports them in batches.

    ``dropped`` counts spans lost because the queue was full or an export failed.
    """

    def __init__(self, exporter: SpanExporter, *, queue_size: int, batch_size: int, interval_s: float) -> None:
        self._exporter = exporter
        self._queue: deque[ReadableSpan] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = interval_s
        self._wake = threading.Event()
        self._stopping = False
        self.dropped = 0
        self.exported = 0
        self._thread = threading.Thread(target=self._export_forever, name="sluice-trace-export", daemon=True)
        self._thread.start()

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        if self._stopping or len(self._queue) >= self._queue_size:
            self.dropped += 1
            return
        self._queue.append(span)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    def _export_forever(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._export_queued()
        self._export_queued()

    def _export_queued(self) -> None:
        while self._queue:
            batch = [self._queue.popleft()
                                             for _ in range(min(self._batch_size, len(self._queue)))]
            try:
                result = self._exporter.export(batch)
            except Exception:
                log.exception("the trace exporter failed")
                result = SpanExportResult.FAILURE
            if result == SpanExportResult.SUCCESS:
                self.exported += len(batch)
            else:
                self.dropped += len(batch)

    def shutdown(self, timeout_s: float = 2.0) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._wake.set()
        return True
