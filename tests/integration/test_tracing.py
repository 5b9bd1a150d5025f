"""OpenTelemetry traces against a real OTLP/HTTP receiver made here: spans, attributes, propagation, faults."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from tests.conftest import Proc, call, free_port, start_gateway, wait_until
from tests.integration.test_metrics import scrape, value

pytestmark = pytest.mark.integration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
MARKER_TRACE = "0af7651916cd43dd8448eb211c80319c"


class Receiver:
    """An OTLP/HTTP trace receiver: decodes each export and keeps its spans, or blocks when told to."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.exports = 0
        self.blocked = threading.Event()  # set: hold every export until released
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.blocked.is_set():
                    receiver.release.wait(30)
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        receiver.spans.extend(_span(s, service) for s in scope.spans)
                receiver.exports += 1
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def traces(self, count: int) -> dict[str, list[dict[str, Any]]]:
        """Spans by trace id, once ``count`` traces have a finished server span."""
        return wait_until(lambda: self._traces(count), f"{count} traces (spans so far: {self.spans})")

    def _traces(self, count: int) -> dict[str, list[dict[str, Any]]]:
        by_trace = defaultdict(list)
        for span in list(self.spans):
            by_trace[span["trace_id"]].append(span)
        servers = [t for t in by_trace.values() if any(s["kind"] == "server" for s in t)]
        return dict(by_trace) if len(servers) >= count else {}


def _span(span: Any, service: dict[str, str]) -> dict[str, Any]:
    attributes = {}
    for attribute in span.attributes:
        field = attribute.value.WhichOneof("value")
        attributes[attribute.key] = getattr(attribute.value, field)
    return {
        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
        "name": span.name, "kind": SpanProto.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_").lower(),
        "attributes": attributes, "status": span.status.code, "service": service.get("service.name"),
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def traced_gateway(tmp_path, mock_url: str, endpoint: str, **options: object) -> Proc:  # type: ignore[no-untyped-def]
    tracing = {"enabled": "true", "endpoint": f'"{endpoint}"', "flush_interval_s": 0.1, "timeout_s": 1,
               "service_name": "sluice-test", **options}
    settings = ", ".join(f"{k}: {v}" for k, v in tracing.items())
    return start_gateway(tmp_path, f"""
observability: {{tracing: {{{settings}}}}}
providers: {{mock: {{kind: openai, base_url: "{mock_url}"}}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  broken: {{targets: [{{provider: mock, model: mock-status-503}}]}}
""")


def sampled(traceparent: str) -> bool:
    """The sampled bit of the trace flags (the SDK may set others, e.g. Level 2's random-trace-id bit)."""
    return bool(int(traceparent[-2:], 16) & 1)


def forwarded(mock_url: str, request_id: str) -> dict[str, str]:
    """The headers the mock upstream received for the request with this id."""
    for seen in call(mock_url, "GET", "/_mock/requests").json():
        if seen["headers"].get("x-request-id") == request_id:
            return dict(seen["headers"])
    raise AssertionError(f"the mock never saw {request_id}")


def test_one_trace_per_request_with_spans_attributes_and_propagation(tmp_path, mock_upstream, receiver) -> None:
    gateway = traced_gateway(tmp_path, mock_upstream.url, receiver.url)
    try:
        for i in range(3):
            assert call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"x-request-id": f"t-{i}"}).status == 200
        caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        reply = call(gateway.url, "POST", "/v1/chat/completions", stream,
                     {"x-request-id": "t-caller", "traceparent": caller, "tracestate": "vendor=1"})
        assert reply.status == 200 and b"[DONE]" in reply.body
        assert call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "model": "broken"},
                    {"x-request-id": "t-broken"}).status == 503
        assert call(gateway.url, "GET", "/nowhere", headers={"x-request-id": "t-lost"}).status == 404
        traces = receiver.traces(6)
    finally:
        gateway.stop()
    assert len(traces) == 6  # one trace per request, no more
    by_request = {}
    for spans in traces.values():
        (server,) = [s for s in spans if s["kind"] == "server"]
        by_request[server["attributes"]["sluice.request_id"]] = (server, [s for s in spans if s is not server])
        assert server["service"] == "sluice-test"
    for i in range(3):
        server, children = by_request[f"t-{i}"]
        assert server["name"] == "POST /v1/chat/completions"
        assert server["attributes"]["http.response.status_code"] == 200
        assert server["attributes"]["gen_ai.request.model"] == "gpt-4o-mini"
        assert sorted(s["name"] for s in children) == ["chat gpt-4o-mini", "routing"]  # no auth, no limits here
        routing, attempt = sorted(children, key=lambda s: s["name"] != "routing")
        assert (routing["kind"], routing["parent"]) == ("internal", server["span_id"])
        assert routing["attributes"] == {"gen_ai.request.model": "gpt-4o-mini", "sluice.provider": "mock"}
        assert (attempt["kind"], attempt["name"], attempt["parent"]) == ("client", "chat gpt-4o-mini",
                                                                        server["span_id"])
        attrs = attempt["attributes"]
        assert (attrs["gen_ai.system"], attrs["gen_ai.operation.name"], attrs["gen_ai.request.model"]) == (
            "openai", "chat", "gpt-4o-mini")
        assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] == 10
        assert attrs["http.response.status_code"] == 200
        # the upstream got the attempt's context
        headers = forwarded(mock_upstream.url, f"t-{i}")
        assert headers["traceparent"][:-3] == f"00-{attempt['trace_id']}-{attempt['span_id']}"
        assert sampled(headers["traceparent"])
    # the caller's trace is continued, its parent kept, and carried upstream with its tracestate
    server, children = by_request["t-caller"]
    attempt = next(s for s in children if s["kind"] == "client")
    assert (server["trace_id"], server["parent"]) == (CALLER_TRACE, CALLER_SPAN)
    assert attempt["attributes"]["gen_ai.usage.output_tokens"] == 10  # from the stream's usage event
    headers = forwarded(mock_upstream.url, "t-caller")
    assert headers["traceparent"][:-3] == f"00-{CALLER_TRACE}-{attempt['span_id']}"
    assert sampled(headers["traceparent"])
    assert headers["tracestate"] == "vendor=1"
    # errors are marked on both spans (status code 2 = ERROR)
    server, children = by_request["t-broken"]
    attempt = next(s for s in children if s["kind"] == "client")
    assert server["status"] == 2 and server["attributes"]["error.type"] == "upstream_5xx"
    assert attempt["status"] == 2 and attempt["attributes"]["http.response.status_code"] == 503
    server, children = by_request["t-lost"]
    assert server["name"] == "GET other" and children == []  # raw paths never name a span
    assert server["attributes"]["error.type"] == "unknown_url"


@pytest.mark.parametrize("traceparent", [
    "garbage", f"00-{CALLER_TRACE}-{CALLER_SPAN}", f"00-{'0' * 32}-{CALLER_SPAN}-01",
    f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01", "00-" + "x" * 200,
])
def test_a_malformed_traceparent_is_ignored_not_echoed(tmp_path, mock_upstream, receiver, traceparent) -> None:
    gateway = traced_gateway(tmp_path, mock_upstream.url, receiver.url)
    try:
        reply = call(gateway.url, "POST", "/v1/chat/completions", CHAT,
                     {"x-request-id": "bad-parent", "traceparent": traceparent})
        assert reply.status == 200
        assert traceparent not in str(reply.headers)
        (spans,) = receiver.traces(1).values()
    finally:
        gateway.stop()
    server = next(s for s in spans if s["kind"] == "server")
    assert server["parent"] == "" and server["trace_id"] != CALLER_TRACE.lower()  # a new root trace
    assert forwarded(mock_upstream.url, "bad-parent")["traceparent"] != traceparent


def test_sampling_is_parent_based(tmp_path, mock_upstream, receiver) -> None:
    gateway = traced_gateway(tmp_path, mock_upstream.url, receiver.url, sample_ratio=0)
    try:
        for i in range(5):  # new traces at ratio 0: none recorded, but the context still travels
            assert call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"x-request-id": f"s-{i}"}).status == 200
        caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        assert call(gateway.url, "POST", "/v1/chat/completions", CHAT,
                    {"x-request-id": "s-parent", "traceparent": caller}).status == 200
        receiver.traces(1)
    finally:
        gateway.stop()  # exports what was still queued before it exits
    # Nothing else arrived: the exporter's queue is first in, first out, so spans of the five earlier requests,
    # had they been queued, would have gone no later than the caller's; and the shutdown sent whatever was left.
    assert list(receiver.traces(1)) == [CALLER_TRACE]  # only the caller's sampled trace
    unsampled = forwarded(mock_upstream.url, "s-0")["traceparent"]
    assert unsampled.startswith("00-") and not sampled(unsampled)


def test_auth_rate_limits_and_routing_have_spans_of_their_own(tmp_path, mock_upstream, receiver) -> None:
    gateway = start_gateway(tmp_path, f"""
store: {{sqlite_path: {json.dumps(str(tmp_path / "store.db"))}}}
auth:
  enabled: true
  static_keys: [{{name: caller, key: sk-traced-caller-0123456789, roles: [user]}}]
ratelimit:
  policies: [{{name: per-key, scope: key, rate: 2, period_s: 600}}]
observability: {{tracing: {{enabled: true, endpoint: "{receiver.url}", flush_interval_s: 0.1}}}}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}}}
""")
    key = {"authorization": "Bearer sk-traced-caller-0123456789"}
    try:
        statuses = [call(gateway.url, "POST", "/v1/chat/completions", CHAT, {**key, "x-request-id": f"k-{i}"}).status
                    for i in range(3)]
        refused = call(gateway.url, "POST", "/v1/chat/completions", CHAT,
                       {"authorization": "Bearer sk-wrong", "x-request-id": "k-bad"}).status
        traces = receiver.traces(4)
    finally:
        gateway.stop()
    assert (statuses, refused) == ([200, 200, 429], 401)
    by_request = {}
    for spans in traces.values():
        (server,) = [s for s in spans if s["kind"] == "server"]
        assert all(s["parent"] == server["span_id"] for s in spans if s is not server)  # children of the request
        by_request[server["attributes"]["sluice.request_id"]] = {s["name"]: s for s in spans if s is not server}
    assert set(by_request["k-0"]) == {"auth", "routing", "rate_limits", "chat gpt-4o-mini"}
    assert all(s["status"] != 2 for s in by_request["k-0"].values())
    limited = by_request["k-2"]  # refused by the limit: no attempt, the limits' span says why
    assert set(limited) == {"auth", "routing", "rate_limits"}
    assert limited["rate_limits"]["status"] == 2 and limited["rate_limits"]["attributes"]["error.type"] == (
        "rate_limit_exceeded")
    bad = by_request["k-bad"]  # refused at the door: nothing after auth
    assert set(bad) == {"auth"} and bad["auth"]["status"] == 2
    assert bad["auth"]["attributes"]["error.type"] == "invalid_api_key"


def test_an_unsampled_trace_goes_upstream_and_into_the_access_log(tmp_path, mock_upstream, receiver) -> None:
    log = tmp_path / "access.jsonl"
    gateway = start_gateway(tmp_path, f"""
observability:
  access_log: true
  access_log_path: "{log}"
  tracing: {{enabled: true, endpoint: "{receiver.url}", flush_interval_s: 0.1, sample_ratio: 0}}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}}}
""")
    try:
        assert call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"x-request-id": "u-new"}).status == 200
        caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"  # the caller's trace, not sampled
        assert call(gateway.url, "POST", "/v1/chat/completions", CHAT,
                    {"x-request-id": "u-caller", "traceparent": caller, "tracestate": "vendor=2"}).status == 200
        # A sampled caller last, as a marker: once its trace arrives, any span queued before it has (the queue is
        # first in, first out), so "nothing else arrived" is an observed fact, not a guess after a sleep.
        marker = f"00-{MARKER_TRACE}-{CALLER_SPAN}-01"
        assert call(gateway.url, "POST", "/v1/chat/completions", CHAT,
                    {"x-request-id": "u-marker", "traceparent": marker}).status == 200
        receiver.traces(1)
    finally:
        gateway.stop()  # writes the queued lines
    assert {span["trace_id"] for span in receiver.spans} == {MARKER_TRACE}  # none of the unsampled two
    new, carried = forwarded(mock_upstream.url, "u-new"), forwarded(mock_upstream.url, "u-caller")
    assert new["traceparent"].startswith("00-") and new["traceparent"].endswith("-00") and new.get("tracestate") is None
    assert carried["traceparent"].startswith(f"00-{CALLER_TRACE}-") and carried["traceparent"].endswith("-00")
    assert carried["traceparent"] != caller and carried["tracestate"] == "vendor=2"  # a span id of this hop's
    lines = {line["request_id"]: line for line in map(json.loads, log.read_text().splitlines())}
    assert lines["u-new"]["trace_id"] == new["traceparent"][3:35]
    assert lines["u-caller"]["trace_id"] == CALLER_TRACE


def test_a_dead_exporter_costs_dropped_spans_not_requests(tmp_path, mock_upstream) -> None:
    gateway = traced_gateway(tmp_path, mock_upstream.url, f"http://127.0.0.1:{free_port()}/v1/traces",
                             timeout_s=0.2)
    try:
        for _ in range(20):
            assert call(gateway.url, "POST", "/v1/chat/completions", CHAT).status == 200
        dropped = wait_until(lambda: (n := value(scrape(gateway.url), "sluice_trace_spans_dropped_total")) >= 40 and n,
                             "the dropped spans counted")
    finally:
        gateway.stop()
    assert dropped >= 40  # 20 server + 20 attempt spans at least (scrapes add their own)


def test_a_stuck_exporter_never_blocks_requests(tmp_path, mock_upstream, receiver) -> None:
    receiver.blocked.set()  # the receiver accepts the connection and never answers
    gateway = traced_gateway(tmp_path, mock_upstream.url, receiver.url, queue_size=10, batch_size=5,
                             timeout_s=30)
    try:
        for _ in range(100):  # would hang here if a request waited on the exporter
            assert call(gateway.url, "POST", "/v1/chat/completions", CHAT, timeout=5).status == 200
        samples = scrape(gateway.url)
    finally:
        receiver.release.set()
        gateway.stop()
    assert value(samples, "sluice_trace_spans_dropped_total") >= 150  # 200 spans, at most 10 queued + 5 in flight


def test_the_access_log_carries_the_trace_id(tmp_path, mock_upstream, receiver) -> None:
    log = tmp_path / "access.jsonl"
    gateway = start_gateway(tmp_path, f"""
observability:
  access_log: true
  access_log_path: "{log}"
  tracing: {{enabled: true, endpoint: "{receiver.url}", flush_interval_s: 0.1}}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}}}
""")
    try:
        assert call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"x-request-id": "logged"}).status == 200
        (trace_id,) = receiver.traces(1)
    finally:
        gateway.stop()  # writes the queued line
    (line,) = [json.loads(text) for text in log.read_text().splitlines()]
    assert (line["request_id"], line["trace_id"]) == ("logged", trace_id)


def test_native_anthropic_answers_keep_their_usage_on_the_spans(tmp_path, mock_upstream, receiver) -> None:
    gateway = start_gateway(tmp_path, f"""
observability: {{tracing: {{enabled: true, endpoint: "{receiver.url}", flush_interval_s: 0.1}}}}
providers: {{ant: {{kind: anthropic, base_url: "{mock_upstream.url}", api_keys: [k]}}}}
models: {{claude: {{targets: [{{provider: ant, model: claude-3-5-haiku-latest}}]}}}}
""")
    try:
        reply = call(gateway.url, "POST", "/v1/messages", {"model": "claude", "max_tokens": 100,
                                                          "messages": [{"role": "user", "content": "hi"}]},
                     {"anthropic-version": "2023-06-01", "x-api-key": "sk-x"})
        (spans,) = receiver.traces(1).values()
    finally:
        gateway.stop()
    assert reply.status == 200
    attempt = next(s for s in spans if s["kind"] == "client")
    assert attempt["attributes"]["gen_ai.usage.output_tokens"] == reply.json()["usage"]["output_tokens"] > 0
