"""The mock upstream: a fast stand-in for LLM providers, for demos, tests, chaos tests and benchmarks.

It is served by Granian like the gateway, over the same Exchange interface.
Faults come from the options (latency, delay between stream chunks, a random
error rate) or, per request, from the upstream model name, so one mock serves
well-behaved and broken targets side by side:

    mock-status-<code>   answers <code> with an OpenAI-shaped error
    mock-slow-<ms>       waits <ms> before answering
    mock-cut-stream      breaks the connection after the first stream events

``GET /_mock/requests`` lists the last requests it received (method, path,
headers), so tests can see what the gateway forwarded.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import deque
from typing import Any

import msgspec
import orjson

from ..server.exchange import Exchange
from . import openai as wire

__all__ = ["MockOptions", "MockUpstream"]

JSON = [("content-type", "application/json")]
SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "text-embedding-3-large")


class MockOptions(msgspec.Struct, frozen=True):
    latency_ms: float = 0.0
    chunk_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    seed: int | None = None


class MockUpstream:
    def __init__(self, options: MockOptions) -> None:
        self.options = options
        self._random = random.Random(options.seed)
        self._seen: deque[dict[str, Any]] = deque(maxlen=100)

    async def handle(self, ex: Exchange) -> None:
        if ex.path == "/_mock/requests":
            await ex.respond(200, JSON, orjson.dumps(list(self._seen)))
            return
        self._seen.append({"method": ex.method, "path": ex.path, "headers": _headers(ex)})
        options = self.options
        if options.latency_ms:
            await asyncio.sleep(options.latency_ms / 1000)
        if options.error_rate and self._random.random() < options.error_rate:
            await _error(ex, options.error_status, "The mock upstream failed on purpose.", "server_error")
            return
        if ex.method == "GET":
            await self._get(ex)
            return
        if ex.method != "POST":
            await _error(ex, 405, f"Method {ex.method} not allowed.", "invalid_request_error")
            return
        try:
            request = orjson.loads(await ex.read_body(64 * 1024 * 1024))
        except orjson.JSONDecodeError:
            await _error(ex, 400, "We could not parse the JSON body of your request.", "invalid_request_error")
            return
        if not isinstance(request, dict) or not isinstance(request.get("model"), str):
            await _error(ex, 400, "you must provide a model parameter", "invalid_request_error")
            return
        if await self._directive(ex, request["model"]):
            return
        await self._post(ex, request)

    async def _get(self, ex: Exchange) -> None:
        if ex.path == "/v1/models":
            body = {"object": "list", "data": [wire.model_card(name) for name in MODELS]}
            await ex.respond(200, JSON, orjson.dumps(body))
        elif ex.path.startswith("/v1/models/"):
            await ex.respond(200, JSON, orjson.dumps(wire.model_card(ex.path[len("/v1/models/"):])))
        else:
            await _error(ex, 404, f"Unknown request URL: GET {ex.path}.", "invalid_request_error")

    async def _directive(self, ex: Exchange, model: str) -> bool:
        """Applies a fault named by the model; True when it answered the request itself."""
        if model.startswith("mock-status-"):
            status = int(model.rsplit("-", 1)[1])
            await _error(ex, status, f"The mock upstream answers {status} for this model.", "server_error")
            return True
        if model.startswith("mock-slow-"):
            await asyncio.sleep(int(model.rsplit("-", 1)[1]) / 1000)
        return False

    async def _post(self, ex: Exchange, request: dict[str, Any]) -> None:
        stream = request.get("stream") is True
        if ex.path == "/v1/chat/completions":
            if stream:
                await self._stream(ex, wire.chat_chunks(request), cut=request["model"] == "mock-cut-stream")
            else:
                await ex.respond(200, JSON, wire.chat_completion(request))
        elif ex.path == "/v1/completions":
            if stream:
                await self._stream(ex, wire.completion_chunks(request), cut=False)
            else:
                await ex.respond(200, JSON, wire.completion(request))
        elif ex.path == "/v1/embeddings":
            try:
                body = wire.embeddings(request)
            except ValueError as exc:
                await _error(ex, 400, str(exc), "invalid_request_error")
                return
            await ex.respond(200, JSON, body)
        else:
            await _error(ex, 404, f"Unknown request URL: POST {ex.path}.", "invalid_request_error")

    async def _stream(self, ex: Exchange, events: Any, cut: bool) -> None:
        await ex.start_stream(200, SSE)
        delay = self.options.chunk_ms / 1000
        for position, event in enumerate(events):
            if position and delay:
                await asyncio.sleep(delay)
            if cut and position == 2:
                await ex.write(event[: len(event) // 2])
                raise ConnectionAbortedError("mock-cut-stream: breaking the connection on purpose")
            await ex.write(event)
        await ex.end_stream()


def _headers(ex: Exchange) -> dict[str, str | None]:
    names = ("authorization", "x-request-id", "content-type", "accept", "host", "x-extra")
    return {name: ex.header(name) for name in names}


async def _error(ex: Exchange, status: int, message: str, kind: str) -> None:
    await ex.respond(status, JSON, wire.error_body(message, kind))


def options_from_env() -> MockOptions:
    return msgspec.json.decode(os.environ.get("SLUICE_MOCK_OPTIONS", "{}"), type=MockOptions)
