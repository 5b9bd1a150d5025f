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
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import orjson

from .._native import RequestIds, valid_request_id
from ..config import Config, ObservabilityConfig
from ..errors import BadGateway, GatewayError, GatewayTimeout, MethodNotAllowed, NotFound
from ..observability.access_log import AccessLog
from ..observability.health import Health
from ..observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..observability.metrics import Metrics
from ..observability.usage import USAGE_TAIL
from ..pipeline.validate import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelRequest,
    decode,
    rename_model,
)
from ..providers import Call
from ..routing import Router
from ..upstream import Response, ResponseTooLarge, UpstreamClient, UpstreamError, UpstreamTimeout
from .exchange import ClientGone, Exchange
from .relay import relay_headers, relay_stream

__all__ = ["Gateway", "create_gateway"]

log = logging.getLogger("sluice.gateway")

JSON = "application/json"


class RequestContext:
    """What the gateway learns about one request on its way, for headers and the access log."""

    __slots__ = ("answer", "model", "overhead_s", "provider", "request_id", "started", "upstream_s",
                 "upstream_status")

    def __init__(self, request_id: str, started: float) -> None:
        self.request_id = request_id
        self.started = started  # perf_counter() at arrival
        self.upstream_s = 0.0  # time spent waiting on the upstream
        self.overhead_s = -1.0  # the gateway's own time, once the response head is ready
        self.model: str | None = None
        self.provider: str | None = None
        self.upstream_status: int | None = None
        self.answer: bytes | None = None  # for the access log's token counts

    def headers(self, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        """Our response headers: request id and the gateway's overhead so far (total minus upstream)."""
        self.overhead_s = time.perf_counter() - self.started - self.upstream_s
        return [("x-request-id", self.request_id), ("x-sluice-overhead-ms", f"{self.overhead_s * 1000:.3f}"),
                *extra]


Handler = Callable[[Exchange, RequestContext], Awaitable[None]]


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
        }
        self.health = Health(self.router)
        self.access_log = _open_access_log(config.observability)
        self.metrics = _open_metrics(config)
        if self.metrics is not None:
            self.routes["/metrics"] = {"GET": self._scrape}
        for path, probe in self.health.probes().items():
            self.routes[path] = {"GET": self._probe_for(probe)}
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
        try:
            methods = self.routes.get(ex.path)
            handler = methods.get(ex.method) if methods is not None else None
            await (handler or self._no_route)(ex, ctx)
        except GatewayError as exc:
            await self._send_error(ex, ctx, exc)
        except ClientGone:
            pass
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            await self._send_error(ex, ctx, GatewayError("The gateway failed to handle the request."))
        finally:
            self._account(ex, ctx)

    def _account(self, ex: Exchange, ctx: RequestContext) -> None:
        """Metrics and access log of a finished request (in a finally: in-flight never leaks)."""
        metrics, access_log = self.metrics, self.access_log
        if metrics is None and access_log is None:
            return
        total = time.perf_counter() - ctx.started
        overhead = ctx.overhead_s if ctx.overhead_s >= 0 else total - ctx.upstream_s
        if metrics is not None:
            metrics.in_flight -= 1
            metrics.observe(ex.path if ex.path in self.routes else "other", ctx.model, ctx.provider, ex.status,
                            total, overhead, ctx.upstream_s, ctx.answer)
        if access_log is not None:
            access_log.record((time.time(), ctx.request_id, ex.method, ex.path, ex.status, total, overhead,
                               ctx.model, ctx.provider, ctx.upstream_status, ctx.answer))

    async def _no_route(self, ex: Exchange, ctx: RequestContext) -> None:
        """Paths outside the exact table (/v1/models/{id}), unknown paths and wrong methods."""
        path = ex.path
        methods = self.routes.get(path)
        if methods is None:
            if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
                methods = {"GET": self._get_model}
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
        headers = ctx.headers(("content-type", JSON), *exc.headers)
        with contextlib.suppress(ClientGone):
            await ex.respond(exc.status, headers, exc.openai_body())

    # -- health and models -------------------------------------------------------------

    def _probe_for(self, probe: Callable[[], tuple[int, bytes]]) -> Handler:
        async def answer(ex: Exchange, ctx: RequestContext) -> None:
            status, body = probe()
            await ex.respond(status, ctx.headers(*self.health.headers()), body)

        return answer

    async def _scrape(self, ex: Exchange, ctx: RequestContext) -> None:
        assert self.metrics is not None
        await ex.respond(200, ctx.headers(("content-type", METRICS_CONTENT_TYPE), ("cache-control", "no-store")),
                         self.metrics.exposition())

    async def _list_models(self, ex: Exchange, ctx: RequestContext) -> None:
        await ex.respond(200, ctx.headers(("content-type", JSON)), self._model_list)

    async def _get_model(self, ex: Exchange, ctx: RequestContext) -> None:
        name = unquote(ex.path[len("/v1/models/"):])
        card = self._model_cards.get(name)
        if card is None:
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
        return self._client

    async def _proxy(self, ex: Exchange, ctx: RequestContext, *, kind: type[ModelRequest], endpoint: str) -> None:
        body = await ex.read_body(self.max_body)
        request: Any = decode(body, kind)
        ctx.model = request.model
        route = self.router.get(request.model)
        if route is None:
            raise _model_not_found(request.model)
        target = route.pick()
        ctx.provider = target.provider.name
        if target.model != request.model:
            body = rename_model(body, target.model)
        stream = bool(request.stream)
        upstream = target.provider.prepare(Call(endpoint, "POST", body, stream, ctx.request_id))
        sent = time.perf_counter()
        try:
            response = await self.client().request(
                upstream.origin, upstream.method, upstream.target, upstream.headers, upstream.body
            )
            ctx.upstream_status = response.status
            if stream and response.status == 200 and _is_event_stream(response):
                ctx.upstream_s = time.perf_counter() - sent
                ctx.answer = await relay_stream(ex, response, ctx.headers(*relay_headers(response)))
                return
            data = response.read_arrived(self.max_response)
            if data is None:
                data = await response.read(self.max_response)
        except UpstreamError as exc:
            ctx.upstream_s = time.perf_counter() - sent
            raise _gateway_error(exc, target.provider.name, ctx.request_id) from None
        ctx.upstream_s = time.perf_counter() - sent
        if self.access_log is not None or self.metrics is not None:
            ctx.answer = data[-USAGE_TAIL:]  # where usage is; never hold a whole answer in the log queue
        await ex.respond(response.status, ctx.headers(*relay_headers(response)), data)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self.close_logs()

    def close_logs(self) -> None:
        """Writes the access-log lines still queued (at shutdown)."""
        if self.access_log is not None:
            self.access_log.close()


def _open_metrics(config: Config) -> Metrics | None:
    if not config.observability.metrics:
        return None
    # `sluice serve` gives its workers one shared directory; another server gets one per process.
    directory = os.environ.get("SLUICE_METRICS_DIR") or tempfile.mkdtemp(prefix="sluice-metrics-")
    return Metrics(directory, set(config.models))


def _open_access_log(config: ObservabilityConfig) -> AccessLog | None:
    if not config.access_log:
        return None
    # Line-buffered text would flush per line; the writer thread batches, so a plain binary file.
    sink = open(config.access_log_path, "ab") if config.access_log_path else None  # noqa: SIM115
    return AccessLog(sink, queue_size=config.access_log_queue, sample_success=config.sample_success)


def _is_event_stream(response: Response) -> bool:
    """An upstream may answer a stream request with plain JSON; that is relayed as it is."""
    content_type = response.header(b"content-type")
    return content_type is not None and content_type.lower().startswith(b"text/event-stream")


def _model_not_found(name: str) -> NotFound:
    return NotFound(f"The model `{name[:200]}` does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def _gateway_error(exc: UpstreamError, provider: str, request_id: str) -> GatewayError:
    log.warning("upstream %s failed: %s", provider, exc, extra={"request_id": request_id})
    if isinstance(exc, UpstreamTimeout):
        return GatewayTimeout(f"The upstream provider '{provider}' did not answer in time.", code="upstream_timeout")
    if isinstance(exc, ResponseTooLarge):
        return BadGateway(f"The upstream provider '{provider}' answered more than the gateway accepts.",
                          code="upstream_response_too_large")
    return BadGateway(f"The upstream provider '{provider}' could not be reached: {exc}", code="upstream_unavailable")


def create_gateway(config: Config) -> Gateway:
    return Gateway(config)

