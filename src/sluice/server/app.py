"""The gateway: dispatches each Exchange by exact path and method, proxies to the model's target.

Built once per config snapshot by ``create_gateway``; it holds no module-level
state.  Every error it makes reaches the caller in the OpenAI shape.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import orjson

from .._native import RequestIds, valid_request_id
from ..config import Config
from ..errors import BadGateway, GatewayError, GatewayTimeout, MethodNotAllowed, NotFound
from ..observability.health import Health
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

Handler = Callable[[Exchange, str], Awaitable[None]]
JSON = "application/json"


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
        request_id = ex.header("x-request-id")
        if request_id is None or not valid_request_id(request_id):
            request_id = self.ids.next()
        try:
            methods = self.routes.get(ex.path)
            handler = methods.get(ex.method) if methods is not None else None
            await (handler or self._no_route)(ex, request_id)
        except GatewayError as exc:
            await self._send_error(ex, request_id, exc)
        except ClientGone:
            pass
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            await self._send_error(ex, request_id, GatewayError("The gateway failed to handle the request."))

    async def _no_route(self, ex: Exchange, request_id: str) -> None:
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
        await handler(ex, request_id)

    async def _send_error(self, ex: Exchange, request_id: str, exc: GatewayError) -> None:
        if ex.started:
            return  # the head went out already; a stream ends itself with an error event
        headers = [("content-type", JSON), ("x-request-id", request_id), *exc.headers]
        with contextlib.suppress(ClientGone):
            await ex.respond(exc.status, headers, exc.openai_body())

    # -- health and models -------------------------------------------------------------

    def _probe_for(self, probe: Callable[[], tuple[int, bytes]]) -> Handler:
        async def answer(ex: Exchange, request_id: str) -> None:
            status, body = probe()
            await ex.respond(status, self.health.headers(request_id), body)

        return answer

    async def _list_models(self, ex: Exchange, request_id: str) -> None:
        await ex.respond(200, [("content-type", JSON), ("x-request-id", request_id)], self._model_list)

    async def _get_model(self, ex: Exchange, request_id: str) -> None:
        name = unquote(ex.path[len("/v1/models/"):])
        card = self._model_cards.get(name)
        if card is None:
            raise _model_not_found(name)
        await ex.respond(200, [("content-type", JSON), ("x-request-id", request_id)], orjson.dumps(card))

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

    async def _proxy(self, ex: Exchange, request_id: str, *, kind: type[ModelRequest], endpoint: str) -> None:
        body = await ex.read_body(self.max_body)
        request: Any = decode(body, kind)
        route = self.router.get(request.model)
        if route is None:
            raise _model_not_found(request.model)
        target = route.pick()
        if target.model != request.model:
            body = rename_model(body, target.model)
        stream = bool(request.stream)
        upstream = target.provider.prepare(Call(endpoint, "POST", body, stream, request_id))
        try:
            response = await self.client().request(
                upstream.origin, upstream.method, upstream.target, upstream.headers, upstream.body
            )
            if stream and response.status == 200 and _is_event_stream(response):
                await relay_stream(ex, response, request_id)
                return
            data = response.read_arrived(self.max_response)
            if data is None:
                data = await response.read(self.max_response)
        except UpstreamError as exc:
            raise _gateway_error(exc, target.provider.name, request_id) from None
        await ex.respond(response.status, relay_headers(response, request_id), data)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


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

