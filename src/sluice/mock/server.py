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
                              :countTokens (also under /v1/), GET /v1beta/models; the key in
                              x-goog-api-key or ?key= (else 403)
    Azure OpenAI              POST /openai/deployments/{deployment}/chat/completions,
                              /completions, /embeddings, GET /openai/models; api-key (or
                              Authorization, else 401)
                              and ?api-version= (else 404) required; the OpenAI wire format
                              with the deployment as the model

Errors come in each format's own shape.  Faults come from the options (``MockOptions``: the
command's flags at start, changed at run time through /_mock/faults) or, per request, from the
upstream model name (the deployment on Azure, the path's model on Gemini), so one mock serves
well-behaved and broken targets side by side.  The options:

    latency_ms, chunk_ms       a delay before every answer; between stream events
    stream_bytes               a streamed OpenAI chat is padded to at least this many bytes (openai.py's
                               PAD_TEXT events): large streams, e.g. for slow readers (0: not padded)
    error_rate, error_status   a fraction of requests answered with an error of that status (drawn
                               with ``seed``, so a seeded run is reproducible)
    retry_after                the Retry-After (seconds) of the errors the mock injects; a 429
                               carries one (1 s) even without it
    fault, fault_rate          a fraction (default: all) of requests whose answer is broken, in the
                               format's shape (faults.py): hang-after-headers, trickle (trickle_ms
                               between bytes), invalid-json, close-mid-stream, error-200, reset

and the model names:

    mock-status-<code>   answers <code> with an error in the format's shape (Anthropic 529: overloaded_error)
    mock-429-<s>         answers 429 with Retry-After <s> seconds (retry-after-ms: the exact delay)
    mock-slow-<ms>       waits <ms> before answering
    mock-cut-stream      cuts a stream in the middle of an event after the first ones (the HTTP body
                         still ends well: for a broken connection, mock-fault-close-mid-stream)
    mock-fault-<kind>    breaks the answer with the fault <kind> (mock-fault-reset, mock-fault-trickle, ...)

Control, for tests (the state is a worker's own: use it with one worker, the default):

    GET /_mock/requests       the last requests received (method, path, query string and the headers a
                              test may check: credentials, versions, ids, trace context): what the
                              gateway forwarded
    GET /_mock/faults         the options in force
    PUT /_mock/faults         changes some of them, without a restart: a JSON object of option fields,
                              e.g. {"error_rate": 1.0, "error_status": 503} or {"fault": "trickle"};
                              400 for an unknown field or a value out of range; a seed restarts the draws
    DELETE /_mock/faults      back to the options the mock started with
    GET /_mock/stats          {"requests": N, "errors": E, "faults": F}: the requests to the model
                              endpoints (not /_mock/*), the answers among them with a status >= 400,
                              and the requests given a fault (drawn at fault_rate, or mock-fault-*)
    POST /_mock/stats/reset   zeroes them
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs

import msgspec
import orjson

from ..context import ClientGone
from . import anthropic, gemini
from . import openai as wire
from . import openai_extra as extra
from .faults import DEFAULT_RETRY_AFTER_S, FAULTS, Fault, FaultStop, FaultyExchange, error_body, retry_headers

if TYPE_CHECKING:
    from ..context import Exchange, Headers

__all__ = ["MockOptions", "MockUpstream", "options_from_env", "parse_options"]

JSON = [("content-type", "application/json")]
SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "text-embedding-3-large")
BODY_LIMIT = 64 * 1024 * 1024
_GEMINI = re.compile(r"/v1(?:beta)?/models/([^/:]+):([A-Za-z]+)")
_AZURE = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|completions|embeddings)")
_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_AZURE_DENIED = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
                 "valid key for an active subscription and use a correct regional API endpoint for your resource.")
_RECORDED = ("authorization", "x-request-id", "content-type", "accept", "host", "x-extra", "traceparent",
             "tracestate", "x-api-key", "anthropic-version", "anthropic-beta", "x-goog-api-key", "api-key",
             "x-example-key", "x-example-client")  # the last two: examples/plugins' provider kind


_Rate = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
_Delay = Annotated[float, msgspec.Meta(ge=0.0)]


class MockOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the mock does to its answers (see the module's docstring); checked by ``parse_options``."""

    latency_ms: _Delay = 0.0
    chunk_ms: _Delay = 0.0
    error_rate: _Rate = 0.0
    error_status: Annotated[int, msgspec.Meta(ge=200, le=599)] = 500  # 1xx would break Granian's answer
    seed: int | None = None
    retry_after: _Delay | None = None
    fault: Fault | None = None
    fault_rate: _Rate = 1.0
    trickle_ms: _Delay = 10.0
    stream_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0

    @property
    def plain(self) -> bool:
        """No latency, error or fault: every request takes the fast path."""
        return not (self.latency_ms or self.error_rate or self.fault)


def _dialect(path: str) -> str:
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path.startswith("/v1beta/") or (path.startswith("/v1/models/") and ":" in path):
        return "gemini"
    if path.startswith("/openai/"):
        return "azure"
    return "openai"


class MockUpstream:
    def __init__(self, options: MockOptions) -> None:
        self._initial = options
        self._set_options(options, reseed=True)
        self._seen: deque[dict[str, Any]] = deque(maxlen=100)
        self._ids = itertools.count(1)
        self._requests = self._errors = self._faults = 0

    def _set_options(self, options: MockOptions, *, reseed: bool) -> None:
        self.options = options
        self._plain = options.plain  # the one test a request pays when no fault is set
        if reseed:
            self._random = random.Random(options.seed)

    async def handle(self, ex: Exchange) -> None:
        if ex.path.startswith("/_mock/"):
            await self._control(ex)
            return
        self._seen.append({"method": ex.method, "path": ex.path, "query": ex.query, "headers": _headers(ex)})
        self._requests += 1
        dialect = _dialect(ex.path)
        try:
            if self._plain:
                await self._answer(ex, dialect)
            else:
                await self._answer_with_faults(ex, dialect)
        except (FaultStop, ClientGone):
            pass  # a fault ended the answer, or the client left: nothing more to send
        if ex.status >= 400:
            self._errors += 1

    async def _answer_with_faults(self, ex: Exchange, dialect: str) -> None:
        """The latency, then an error or a fault, each drawn at its rate; then the answer."""
        options = self.options
        if options.latency_ms:
            await asyncio.sleep(options.latency_ms / 1000)
        if options.error_rate and self._random.random() < options.error_rate:
            await self._inject(ex, dialect, options.error_status, "The mock upstream failed on purpose.")
            return
        if options.fault is not None and (options.fault_rate >= 1.0 or self._random.random() < options.fault_rate):
            ex = self._broken(ex, options.fault, dialect)
        await self._answer(ex, dialect)

    async def _answer(self, ex: Exchange, dialect: str) -> None:
        if dialect == "openai":
            await self._openai(ex)
        elif dialect == "anthropic":
            await self._anthropic(ex)
        elif dialect == "gemini":
            await self._gemini(ex)
        else:
            await self._azure(ex)

    def _broken(self, ex: Exchange, fault: str, dialect: str) -> Exchange:
        """``ex``, wrapped so that its answer breaks with ``fault``."""
        if isinstance(ex, FaultyExchange):  # a mock-fault-<kind> under --fault: the model's wins
            ex.fault = fault
            return ex
        self._faults += 1
        options = self.options
        return FaultyExchange(ex, fault, dialect, trickle_ms=options.trickle_ms, error_status=options.error_status)

    async def _fail(self, ex: Exchange, dialect: str, status: int, message: str,
                    extra_headers: Headers | None = None) -> None:
        headers = [*JSON, ("request-id", f"req_mock_{next(self._ids)}")] if dialect == "anthropic" else JSON
        if extra_headers:
            headers = [*headers, *extra_headers]
        await ex.respond(status, headers, error_body(dialect, status, message))

    async def _inject(self, ex: Exchange, dialect: str, status: int, message: str,
                      retry_after: float | None = None) -> None:
        """An error the mock answers on purpose, with a Retry-After when set (always on a 429)."""
        if retry_after is None:
            retry_after = self.options.retry_after
            if retry_after is None and status == 429:
                retry_after = DEFAULT_RETRY_AFTER_S
        await self._fail(ex, dialect, status, message, None if retry_after is None else retry_headers(retry_after))

    async def _directive(self, ex: Exchange, model: str, dialect: str) -> Exchange | None:
        """Applies a fault named by the model: None when it answered the request itself, else the
        Exchange to answer on (``ex``, or ``ex`` to be broken by mock-fault-<kind>)."""
        if not model.startswith("mock-"):
            return ex
        kind, _, value = model[len("mock-"):].partition("-")
        if kind == "status" and value.isdigit() and 200 <= int(value) <= 599:
            status = int(value)
            message = "Overloaded" if dialect == "anthropic" and status == 529 \
                else f"The mock upstream answers {status} for this model."
            await self._inject(ex, dialect, status, message)
            return None
        if kind == "429" and _SECONDS.fullmatch(value):
            await self._inject(ex, dialect, 429, f"Rate limit reached: retry after {value} s.", float(value))
            return None
        if kind == "slow" and value.isdigit():
            await asyncio.sleep(int(value) / 1000)
        elif kind == "fault" and value in FAULTS:
            return self._broken(ex, value, dialect)
        return ex

    # -- control (/_mock/*) ----------------------------------------------------------------------

    async def _control(self, ex: Exchange) -> None:
        path, method = ex.path, ex.method
        if path == "/_mock/requests":
            await ex.respond(200, JSON, orjson.dumps(list(self._seen)))
        elif path == "/_mock/faults" and method in ("GET", "PUT", "DELETE"):
            if method == "PUT":
                problem = self._change(await ex.read_body(BODY_LIMIT))
                if problem is not None:
                    await _error(ex, 400, problem, "invalid_request_error")
                    return
            elif method == "DELETE":
                self._set_options(self._initial, reseed=True)
            await ex.respond(200, JSON, msgspec.json.encode(self.options))
        elif path == "/_mock/stats" and method == "GET":
            await ex.respond(200, JSON, self._stats())
        elif path == "/_mock/stats/reset" and method == "POST":
            self._requests = self._errors = self._faults = 0
            await ex.respond(200, JSON, self._stats())
        elif path in ("/_mock/faults", "/_mock/stats", "/_mock/stats/reset"):
            await _error(ex, 405, f"Method {method} not allowed.", "invalid_request_error")
        else:
            await _error(ex, 404, f"Unknown request URL: {method} {path}.", "invalid_request_error")

    def _change(self, body: bytes) -> str | None:
        """Applies the options of a PUT /_mock/faults body over those in force; what is wrong with it, or None."""
        try:
            fields = orjson.loads(body)
        except orjson.JSONDecodeError:
            fields = None
        if not isinstance(fields, dict):
            return "The body must be a JSON object of mock options, e.g. {\"error_rate\": 0.5}."
        try:
            options = parse_options({**msgspec.structs.asdict(self.options), **fields})
        except ValueError as exc:
            return str(exc)
        self._set_options(options, reseed="seed" in fields)
        return None

    def _stats(self) -> bytes:
        return orjson.dumps({"requests": self._requests, "errors": self._errors, "faults": self._faults})

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
        answer = await self._directive(ex, request["model"], "openai")
        if answer is not None:
            await self._post(answer, ex.path, request)

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
                await self._stream(ex, wire.chat_chunks(request, self.options.stream_bytes),
                                   2 if request["model"] == "mock-cut-stream" else None)
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
        if ex.method == "GET" and ex.path == "/openai/models" and parse_qs(ex.query).get("api-version"):
            body = {"object": "list", "data": [wire.model_card(name) for name in MODELS]}  # health checks
            await ex.respond(200, JSON, orjson.dumps(body))
            return
        if route is None or ex.method != "POST" or not parse_qs(ex.query).get("api-version"):
            await self._fail(ex, "azure", 404, "Resource not found")
            return
        parsed, request = await self._json(ex)
        if not parsed or not isinstance(request, dict):
            await _error(ex, 400, "We could not parse the JSON body of your request.", "invalid_request_error")
            return
        deployment = route.group(1)
        answer = await self._directive(ex, deployment, "azure")
        if answer is not None:
            await self._post(answer, "/v1/" + route.group(2), {**request, "model": deployment})

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
        answer = await self._directive(ex, request["model"], "anthropic")
        if answer is None:
            return
        ex = answer
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
        if ex.method == "GET" and ex.path == "/v1beta/models":  # the model list (health checks)
            if not ex.header("x-goog-api-key") and not parse_qs(ex.query).get("key"):
                await self._fail(ex, "gemini", 403, gemini.MISSING_KEY_MESSAGE)
            else:
                await ex.respond(200, JSON, gemini.model_list(MODELS))
            return
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
        answer = await self._directive(ex, model, "gemini")
        if answer is None:
            return
        ex = answer
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


def parse_options(fields: dict[str, Any]) -> MockOptions:
    """MockOptions from a mapping of its fields; ValueError naming the field unknown or out of range."""
    try:
        return msgspec.convert(fields, MockOptions)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
