"""The mock upstream: a fast stand-in for LLM providers, for demos, tests, chaos tests and benchmarks.

It is served by Granian like the gateway, over the same Exchange interface, and speaks four
wire formats on one port, told apart by the path:

    OpenAI (openai.py)        POST /v1/chat/completions, /v1/completions, /v1/embeddings,
                              GET /v1/models, /v1/models/{id}; any credentials
    Anthropic (anthropic.py)  POST /v1/messages, /v1/messages/count_tokens; the key in
                              x-api-key or Authorization: Bearer (else 401) and
                              anthropic-version (else 400) required
    Gemini (gemini.py)        POST /v1beta/models/{model}:generateContent,
                              :streamGenerateContent (?alt=sse for SSE, else a JSON array),
                              :countTokens (also under /v1/); the key in x-goog-api-key or
                              ?key= (else 403)
    Azure OpenAI              POST /openai/deployments/{deployment}/chat/completions,
                              /completions, /embeddings; api-key (or Authorization, else 401)
                              and ?api-version= (else 404) required; the OpenAI wire format
                              with the deployment as the model

Errors come in each format's own shape.  Faults come from the options (latency, delay between
stream chunks, a random error rate) or, per request, from the upstream model name (the
deployment on Azure, the path's model on Gemini), so one mock serves well-behaved and broken
targets side by side:

    mock-status-<code>   answers <code> with an error in the format's shape (Anthropic 529: overloaded_error)
    mock-slow-<ms>       waits <ms> before answering
    mock-cut-stream      breaks the connection after the first stream events

``GET /_mock/requests`` lists the last requests it received (method, path, query string and
the headers a test may check: credentials, versions, ids, trace context), so tests can see
what the gateway forwarded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec
import orjson

from . import anthropic, gemini
from . import openai as wire
from . import openai_extra as extra

if TYPE_CHECKING:
    from ..server.exchange import Exchange, Headers

__all__ = ["MockOptions", "MockUpstream"]

JSON = [("content-type", "application/json")]
SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "text-embedding-3-large")
BODY_LIMIT = 64 * 1024 * 1024
_GEMINI = re.compile(r"/v1(?:beta)?/models/([^/:]+):([A-Za-z]+)")
_AZURE = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|completions|embeddings)")
_AZURE_DENIED = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
                 "valid key for an active subscription and use a correct regional API endpoint for your resource.")
_RECORDED = ("authorization", "x-request-id", "content-type", "accept", "host", "x-extra", "traceparent",
             "tracestate", "x-api-key", "anthropic-version", "anthropic-beta", "x-goog-api-key", "api-key",
             "x-example-key", "x-example-client")  # the last two: examples/plugins' provider kind


class MockOptions(msgspec.Struct, frozen=True):
    latency_ms: float = 0.0
    chunk_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    seed: int | None = None


def _dialect(path: str) -> str:
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path.startswith("/v1beta/") or (path.startswith("/v1/models/") and ":" in path):
        return "gemini"
    if path.startswith("/openai/"):
        return "azure"
    return "openai"


def _error_body(dialect: str, status: int, message: str) -> bytes:
    if dialect == "anthropic":
        return anthropic.error_body(status, message)
    if dialect == "gemini":
        return gemini.error_body(status, message)
    if dialect == "azure":
        return orjson.dumps({"error": {"code": str(status), "message": message}})
    return wire.error_body(message, "server_error")


class MockUpstream:
    def __init__(self, options: MockOptions) -> None:
        self.options = options
        self._random = random.Random(options.seed)
        self._seen: deque[dict[str, Any]] = deque(maxlen=100)
        self._ids = itertools.count(1)

    async def handle(self, ex: Exchange) -> None:
        if ex.path == "/_mock/requests":
            await ex.respond(200, JSON, orjson.dumps(list(self._seen)))
            return
        self._seen.append({"method": ex.method, "path": ex.path, "query": ex.query, "headers": _headers(ex)})
        options = self.options
        dialect = _dialect(ex.path)
        if options.latency_ms:
            await asyncio.sleep(options.latency_ms / 1000)
        if options.error_rate and self._random.random() < options.error_rate:
            await self._fail(ex, dialect, options.error_status, "The mock upstream failed on purpose.")
            return
        if dialect == "openai":
            await self._openai(ex)
        elif dialect == "anthropic":
            await self._anthropic(ex)
        elif dialect == "gemini":
            await self._gemini(ex)
        else:
            await self._azure(ex)

    async def _fail(self, ex: Exchange, dialect: str, status: int, message: str) -> None:
        headers = [*JSON, ("request-id", f"req_mock_{next(self._ids)}")] if dialect == "anthropic" else JSON
        await ex.respond(status, headers, _error_body(dialect, status, message))

    async def _directive(self, ex: Exchange, model: str, dialect: str) -> bool:
        """Applies a fault named by the model; True when it answered the request itself."""
        if model.startswith("mock-status-") and model[len("mock-status-"):].isdigit():
            status = int(model[len("mock-status-"):])
            message = "Overloaded" if dialect == "anthropic" and status == 529 \
                else f"The mock upstream answers {status} for this model."
            await self._fail(ex, dialect, status, message)
            return True
        if model.startswith("mock-slow-") and model[len("mock-slow-"):].isdigit():
            await asyncio.sleep(int(model[len("mock-slow-"):]) / 1000)
        return False

    async def _stream(self, ex: Exchange, events: Iterable[bytes], cut_at: int | None,
                      headers: Headers = SSE) -> None:
        """Writes the events, waiting chunk_ms between them; at ``cut_at`` half an event, then the cut."""
        await ex.start_stream(200, headers)
        delay = self.options.chunk_ms / 1000
        for position, event in enumerate(events):
            if position and delay:
                await asyncio.sleep(delay)
            if position == cut_at:
                await ex.write(event[: len(event) // 2])
                raise ConnectionAbortedError("mock-cut-stream: breaking the connection on purpose")
            await ex.write(event)
        await ex.end_stream()

    async def _json(self, ex: Exchange) -> tuple[bool, Any]:
        try:
            return True, orjson.loads(await ex.read_body(BODY_LIMIT))
        except orjson.JSONDecodeError:
            return False, None

    # -- OpenAI, and Azure OpenAI ----------------------------------------------------------------

    async def _openai(self, ex: Exchange) -> None:
        if ex.path.startswith(("/v1/files", "/v1/audio/speech")):
            await self._files_and_speech(ex)
            return
        if ex.method == "GET":
            await self._get(ex)
            return
        if ex.method != "POST":
            await _error(ex, 405, f"Method {ex.method} not allowed.", "invalid_request_error")
            return
        parsed, request = await self._json(ex)
        if not parsed:
            await _error(ex, 400, "We could not parse the JSON body of your request.", "invalid_request_error")
            return
        if not isinstance(request, dict) or not isinstance(request.get("model"), str):
            await _error(ex, 400, "you must provide a model parameter", "invalid_request_error")
            return
        if await self._directive(ex, request["model"], "openai"):
            return
        await self._post(ex, ex.path, request)

    async def _get(self, ex: Exchange) -> None:
        if ex.path == "/v1/models":
            body = {"object": "list", "data": [wire.model_card(name) for name in MODELS]}
            await ex.respond(200, JSON, orjson.dumps(body))
        elif ex.path.startswith("/v1/models/"):
            await ex.respond(200, JSON, orjson.dumps(wire.model_card(ex.path[len("/v1/models/"):])))
        else:
            await _error(ex, 404, f"Unknown request URL: GET {ex.path}.", "invalid_request_error")

    async def _post(self, ex: Exchange, path: str, request: dict[str, Any]) -> None:
        stream = request.get("stream") is True
        if path == "/v1/chat/completions":
            if stream:
                await self._stream(ex, wire.chat_chunks(request), 2 if request["model"] == "mock-cut-stream" else None)
            else:
                await ex.respond(200, JSON, wire.chat_completion(request))
        elif path == "/v1/completions":
            if stream:
                await self._stream(ex, wire.completion_chunks(request), None)
            else:
                await ex.respond(200, JSON, wire.completion(request))
        elif path == "/v1/responses":
            if stream:
                await self._stream(ex, extra.response_events(request), None)
            else:
                await ex.respond(200, JSON, orjson.dumps(extra.response_object(request)))
        elif path == "/v1/embeddings":
            try:
                body = wire.embeddings(request)
            except ValueError as exc:
                await _error(ex, 400, str(exc), "invalid_request_error")
                return
            await ex.respond(200, JSON, body)
        else:
            await _error(ex, 404, f"Unknown request URL: POST {ex.path}.", "invalid_request_error")

    async def _files_and_speech(self, ex: Exchange) -> None:
        """/v1/files (multipart upload, lookup) and /v1/audio/speech (binary, streamed)."""
        if ex.method == "GET" and ex.path.startswith("/v1/files/"):
            await ex.respond(200, JSON, orjson.dumps(extra.file_object(ex.path[len("/v1/files/"):])))
        elif ex.method == "POST" and ex.path == "/v1/files":
            created = extra.upload(ex.header("content-type") or "", await ex.read_body(BODY_LIMIT))
            if created is None:
                await _error(ex, 400, "A multipart upload with 'file' and 'purpose' is needed.",
                             "invalid_request_error")
            else:
                await ex.respond(200, JSON, orjson.dumps(created))
        elif ex.method == "POST" and ex.path == "/v1/audio/speech":
            await self._stream(ex, extra.speech_chunks(), None, [("content-type", "audio/mpeg")])
        else:
            await _error(ex, 404, f"Unknown request URL: {ex.method} {ex.path}.", "invalid_request_error")

    async def _azure(self, ex: Exchange) -> None:
        route = _AZURE.fullmatch(ex.path)
        if not ex.header("api-key") and not ex.header("authorization"):
            await self._fail(ex, "azure", 401, _AZURE_DENIED)
            return
        if route is None or ex.method != "POST" or not parse_qs(ex.query).get("api-version"):
            await self._fail(ex, "azure", 404, "Resource not found")
            return
        parsed, request = await self._json(ex)
        if not parsed or not isinstance(request, dict):
            await _error(ex, 400, "We could not parse the JSON body of your request.", "invalid_request_error")
            return
        deployment = route.group(1)
        if await self._directive(ex, deployment, "azure"):
            return
        await self._post(ex, "/v1/" + route.group(2), {**request, "model": deployment})

    # -- Anthropic -------------------------------------------------------------------------------

    async def _anthropic(self, ex: Exchange) -> None:
        if ex.path not in ("/v1/messages", "/v1/messages/count_tokens"):
            await self._fail(ex, "anthropic", 404, "Not Found")
            return
        if ex.method != "POST":
            await self._fail(ex, "anthropic", 405, f"Method {ex.method} not allowed.")
            return
        problem = anthropic.check_headers(ex.header("x-api-key"), ex.header("authorization"),
                                          ex.header("anthropic-version"))
        if problem is not None:
            await self._fail(ex, "anthropic", *problem)
            return
        parsed, request = await self._json(ex)
        if not parsed:
            await self._fail(ex, "anthropic", 400, "There was an issue with the request body: invalid JSON.")
            return
        count = ex.path == "/v1/messages/count_tokens"
        beta = ex.header("anthropic-beta") is not None or "beta=true" in ex.query
        try:
            anthropic.validate(request, count=count, beta=beta)
        except ValueError as exc:
            await self._fail(ex, "anthropic", 400, str(exc))
            return
        if await self._directive(ex, request["model"], "anthropic"):
            return
        number = next(self._ids)
        request_id = ("request-id", f"req_mock_{number}")
        if count:
            await ex.respond(200, [*JSON, request_id], anthropic.count_tokens(request))
        elif request.get("stream") is True:
            await self._stream(ex, anthropic.message_events(request, number),
                               4 if request["model"] == "mock-cut-stream" else None, [*SSE, request_id])
        else:
            await ex.respond(200, [*JSON, request_id], anthropic.message(request, number))

    # -- Gemini ----------------------------------------------------------------------------------

    async def _gemini(self, ex: Exchange) -> None:
        route = _GEMINI.fullmatch(ex.path)
        if route is None or route.group(2) not in ("generateContent", "streamGenerateContent", "countTokens"):
            await self._fail(ex, "gemini", 404, f"The requested URL {ex.path} was not found on this server.")
            return
        if ex.method != "POST":
            await self._fail(ex, "gemini", 405, f"Method {ex.method} not allowed.")
            return
        query = parse_qs(ex.query)
        if not ex.header("x-goog-api-key") and not query.get("key"):
            await self._fail(ex, "gemini", 403, gemini.MISSING_KEY_MESSAGE)
            return
        parsed, request = await self._json(ex)
        if not parsed:
            await self._fail(ex, "gemini", 400, "Invalid JSON payload received. Unexpected token.")
            return
        model, method = route.group(1), route.group(2)
        try:
            gemini.validate(request, count=method == "countTokens")
        except ValueError as exc:
            await self._fail(ex, "gemini", 400, str(exc))
            return
        if await self._directive(ex, model, "gemini"):
            return
        number = next(self._ids)
        cut_at = 2 if model == "mock-cut-stream" else None
        if method == "countTokens":
            await ex.respond(200, JSON, gemini.count_tokens(request))
        elif method == "generateContent":
            await ex.respond(200, JSON, gemini.generate(request, model, number))
        elif query.get("alt") == ["sse"]:
            await self._stream(ex, gemini.sse_events(request, model, number), cut_at)
        else:
            await self._stream(ex, gemini.json_array_pieces(request, model, number), cut_at, JSON)


def _headers(ex: Exchange) -> dict[str, str | None]:
    return {name: ex.header(name) for name in _RECORDED}


async def _error(ex: Exchange, status: int, message: str, kind: str) -> None:
    await ex.respond(status, JSON, wire.error_body(message, kind))


def options_from_env() -> MockOptions:
    return msgspec.json.decode(os.environ.get("SLUICE_MOCK_OPTIONS", "{}"), type=MockOptions)
