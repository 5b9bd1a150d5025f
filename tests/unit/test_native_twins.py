"""The compiled helpers and their pure-Python twins: same cases, same answers."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sluice._native as native
from sluice._native import _pure_context, _pure_logline, _pure_speedups, _pure_stats

try:
    from sluice._native import _context, _logline, _speedups, _stats
except ImportError:  # not built here
    _speedups = _stats = _logline = _context = None

NOT_BUILT = pytest.mark.skipif(_speedups is None, reason="extension not built")
IMPLEMENTATIONS = [
    pytest.param(_pure_speedups, id="pure"),
    pytest.param(_speedups, id="compiled", marks=NOT_BUILT),
]
STATS = [
    pytest.param(_pure_stats, id="pure"),
    pytest.param(_stats, id="compiled", marks=NOT_BUILT),
]


def test_compiled_is_active_when_required() -> None:
    if os.environ.get("SLUICE_REQUIRE_COMPILED") == "1":
        assert None not in (_speedups, _stats, _logline, _context), "the Cython extensions did not build or import"
        assert native.IMPLEMENTATION == "compiled"


def _context_class(impl):  # type: ignore[no-untyped-def]
    """The request context each implementation takes: the compiled helpers take only the compiled one."""
    pure = impl in (_pure_speedups, _pure_stats, _pure_logline)
    return _pure_context.RequestContext if pure else _context.RequestContext


def _compiled(impl) -> bool:  # type: ignore[no-untyped-def]
    return impl not in (_pure_speedups, _pure_stats, _pure_logline)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("value", "expected"), [
    ("abc", True), ("A" * 128, True), ("A" * 129, False), ("", False), ("a b", False), ("a\tb", False),
    ("a\x7fb", False), ("caf\u00e9", False), ("!~", True), ("req_01HZX-9", True), ("\x00", False),
])
def test_valid_request_id(impl, value: str, expected: bool) -> None:
    assert impl.valid_request_id(value) is expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_request_ids_are_unique_hex(impl) -> None:
    ids = impl.RequestIds(12345)
    seen = {ids.next() for _ in range(10000)}
    assert len(seen) == 10000
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in seen)
    assert all(i.startswith(f"{12345:016x}") for i in seen)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_request_id_seed_bounds(impl) -> None:
    impl.RequestIds(2**64 - 1).next()
    with pytest.raises(OverflowError):
        impl.RequestIds(2**64)
    with pytest.raises(OverflowError):
        impl.RequestIds(-1)


@NOT_BUILT
@given(st.text(max_size=200))
def test_twins_agree_on_validation(value: str) -> None:
    assert _speedups.valid_request_id(value) == _pure_speedups.valid_request_id(value)


@NOT_BUILT
@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=1, max_value=50))
def test_twins_agree_on_id_sequences(seed: int, count: int) -> None:
    compiled, pure = _speedups.RequestIds(seed), _pure_speedups.RequestIds(seed)
    assert [compiled.next() for _ in range(count)] == [pure.next() for _ in range(count)]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_trace_ids_are_valid_unsampled_contexts_sampled_at_the_ratio(impl) -> None:
    from sluice.traceparent import parse_traceparent

    ids = impl.TraceIds(2024)
    drawn = [ids.new_trace(0.25) for _ in range(20000)]
    sampled = drawn.count(None)
    assert 0.23 * 20000 < sampled < 0.27 * 20000  # the id's low half under a quarter of its range
    contexts = [parse_traceparent(t) for t in drawn if t is not None]
    assert all(c is not None and not c[2] for c in contexts)  # well formed, flags 00 (not sampled)
    assert len({c[0] for c in contexts if c}) == len(contexts) and len({c[1] for c in contexts if c}) == len(contexts)
    assert all(ids.new_trace(1.0) is None for _ in range(100))  # everything sampled: the SDK makes the ids
    assert all(ids.new_trace(0.0) is not None for _ in range(100))
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    children = {ids.child(caller) for _ in range(100)}
    assert len(children) == 100 and all(parse_traceparent(c) is not None and c[3:35] == caller for c in children)
    assert all(c.endswith("-00") for c in children)
    for bad in ("", "abc", caller + "0", "é" * 32):
        with pytest.raises(ValueError):
            ids.child(bad)
    with pytest.raises(OverflowError):
        impl.TraceIds(-1)


@NOT_BUILT
@given(st.integers(min_value=0, max_value=2**64 - 1), st.floats(min_value=0.0, max_value=1.0),
       st.integers(min_value=1, max_value=30))
def test_twins_agree_on_trace_ids(seed: int, ratio: float, count: int) -> None:
    compiled, pure = _speedups.TraceIds(seed), _pure_speedups.TraceIds(seed)
    caller = "0af7651916cd43dd8448eb211c80319c"
    assert [(compiled.new_trace(ratio), compiled.child(caller)) for _ in range(count)] == [
        (pure.new_trace(ratio), pure.child(caller)) for _ in range(count)]


def test_generated_ids_pass_validation() -> None:
    ids = native.RequestIds(7)
    assert all(native.valid_request_id(ids.next()) for _ in range(100))


# -- token counts ----------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("answer", "counts"), [
    (b'{"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}', (7, 3)),
    (b'{"usage": {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 1}}}', (1, -1)),
    (b'data: {"choices": [], "usage": {"completion_tokens": 2}}\n\n', (-1, 2)),
    (b'{"usage" :\n {\t"prompt_tokens" : 4, "x": {"y": 1}}, "later": 1}', (4, -1)),
    (b'{"usage": null, "x": {"prompt_tokens": 9}}', (-1, -1)),
    (b'{"usage": {"prompt_tokens": 1', (1, -1)),
    (b'{"usage": {"prompt_tokens": "many", "prompt_tokens": 5}}', (5, -1)),  # the first one that is a count
    (b'{"usage": {"prompt_tokens": 1234567890123456789}}', (-1, -1)),  # 19 digits: no count
    (b'{"usage": {"prompt_tokens": 123456789012345678}}', (123456789012345678, -1)),
    (b'{"usage": {}}', (-1, -1)),
    (b'"usage"', (-1, -1)),
    (b"", (-1, -1)),
    (b"not json at all", (-1, -1)),
    (b'{"usage": {"prompt_tokens": 3}}' + b" " * 5000, (-1, -1)),  # usage outside the tail
])
def test_token_counts(impl, answer: bytes, counts: tuple[int, int]) -> None:
    assert impl.token_counts(answer) == counts


_USAGE_PIECES = st.sampled_from([b'"usage"', b":", b" ", b"\n", b"{", b"}", b'"prompt_tokens"', b"12", b"0",
                                 b'"completion_tokens"', b"9" * 19, b",", b"null", b'"', b"x", b"\xff"])


@NOT_BUILT
@given(st.lists(_USAGE_PIECES, max_size=40).map(b"".join) | st.binary(max_size=300))
def test_twins_agree_on_token_counts(answer: bytes) -> None:
    assert _speedups.token_counts(answer) == _pure_speedups.token_counts(answer)


# -- request stats ---------------------------------------------------------------------------

@pytest.mark.parametrize("impl", STATS)
def test_histogram_buckets(impl) -> None:
    histograms = impl.Histograms((0.1, 1.0, 10.0))
    for value in (0.05, 0.1, 0.5, 1.0, 5.0, 50.0):
        histograms.observe("a", value)
    # a value goes to the first bound it does not exceed; the last bucket is +Inf, then the sum
    assert histograms.series() == {"a": [2.0, 2.0, 1.0, 1.0, 56.65]}
    with pytest.raises(ValueError):
        impl.Histograms((1.0, 0.5))
    with pytest.raises(ValueError):
        impl.Histograms(())


@pytest.mark.parametrize("impl", STATS)
def test_request_stats_labels_are_bounded(impl) -> None:
    stats = impl.RequestStats({"gpt"}, (0.1, 1.0), (0.001,), (10, 100))
    stats.observe("/v1/chat/completions", "gpt", "p", 200, None, 0.5, 0.0005, 0.4, -1.0, 12, 3)
    stats.observe("/v1/chat/completions", "user-made-up-name", None, 404, "model_not_found", 0.01, 0.01,
                  -1.0, -1.0, -1, -1)
    stats.observe("other", None, None, 404, "unknown_url", 0.01, 0.01, -1.0, -1.0, -1, -1)
    snap = stats.snapshot()
    assert sorted(snap["requests"]) == [["/v1/chat/completions", "gpt", "p", 200, 1],
                                        ["/v1/chat/completions", "unknown", "none", 404, 1],
                                        ["other", "none", "none", 404, 1]]
    assert sorted(snap["errors"]) == [["/v1/chat/completions", "model_not_found", 1], ["other", "unknown_url", 1]]
    assert snap["tokens_in"] == [["gpt", 12]] and snap["tokens_out"] == [["gpt", 3]]
    assert snap["upstream"] == [["p", "gpt", [0.0, 1.0, 0.0, 0.4]]] and snap["ttft"] == []
    assert sorted(snap["token_usage"]) == [["input", "gpt", "p", [0.0, 1.0, 0.0, 12.0]],
                                           ["output", "gpt", "p", [1.0, 0.0, 0.0, 3.0]]]


_OBSERVATIONS = st.lists(st.tuples(
    st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "other"]),
    st.sampled_from([None, "gpt", "emb", "stranger"]),
    st.sampled_from([None, "mock", "azure"]),
    st.sampled_from([200, 400, 404, 429, 500, 502]),
    st.sampled_from([None, "upstream_5xx", "model_not_found"]),
    *(st.floats(min_value=0, max_value=200, allow_nan=False) for _ in range(2)),
    *(st.one_of(st.just(-1.0), st.floats(min_value=0, max_value=200, allow_nan=False)) for _ in range(2)),
    *(st.integers(min_value=-1, max_value=10**9) for _ in range(2)),
), max_size=60)


@NOT_BUILT
@given(_OBSERVATIONS)
def test_twins_agree_on_request_stats(observations: list[tuple]) -> None:  # type: ignore[type-arg]
    args = ({"gpt", "emb"}, (0.001, 0.01, 0.1, 1.0, 10.0), (0.0001, 0.001), (1, 16, 256, 4096))
    compiled, pure = _stats.RequestStats(*args), _pure_stats.RequestStats(*args)
    for observation in observations:
        compiled.observe(*observation)
        pure.observe(*observation)
    assert compiled.snapshot() == pure.snapshot()


# -- access-log lines ------------------------------------------------------------------------

def _entry(impl, **fields):  # type: ignore[no-untyped-def]
    ctx = _context_class(impl)(fields.pop("request_id", "r1"), 0.0)
    ctx.at, ctx.method, ctx.path, ctx.route, ctx.status = 1700000000.25, "POST", "/v1/x", "other", 200
    for name, value in fields.items():
        setattr(ctx, name, value)
    return ctx


def _formatter(module):  # type: ignore[no-untyped-def]
    from sluice.observability.access_log import Line

    return module.LineFormatter(Line)


LINES = [pytest.param(_pure_logline, id="pure"), pytest.param(_logline, id="compiled", marks=NOT_BUILT)]


_GOOD_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("impl", LINES)
@pytest.mark.parametrize("traceparent", [
    _GOOD_PARENT, _GOOD_PARENT[:-2] + "00", _GOOD_PARENT[:-2] + "ff", "01" + _GOOD_PARENT[2:],
    _GOOD_PARENT.upper(), _GOOD_PARENT + " ", _GOOD_PARENT[:-1], _GOOD_PARENT.replace("-", "_", 1),
    f"00-{'0' * 32}-00f067aa0ba902b7-01", f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01",
    _GOOD_PARENT[:10] + "g" + _GOOD_PARENT[11:], _GOOD_PARENT[:40] + "é" + _GOOD_PARENT[41:], _GOOD_PARENT[:-1] + "x",
    "", "00-",
])
def test_a_lines_trace_id_is_a_valid_traceparents_by_the_parsers_rules(impl, traceparent: str) -> None:
    from sluice.traceparent import parse_traceparent

    parsed = parse_traceparent(traceparent)
    (line,) = _lines(impl, [_entry(impl, traceparent=traceparent)]).splitlines()
    assert msgspec.json.decode(line).get("trace_id") == (parsed[0] if parsed is not None else None)


@pytest.mark.parametrize("impl", LINES)
def test_line_fields(impl) -> None:
    line = _formatter(impl).line(_entry(impl, total_s=0.0012345, overhead_s=0.0000005, ttfb_s=0.0, ttft_s=-1.0,
                                        tokens_in=0, tokens_out=-1, path="/" + "p" * 300,
                                        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
    assert line.time == "2023-11-14T22:13:20.250Z"
    assert (line.duration_ms, line.overhead_ms, line.ttfb_ms, line.ttft_ms) == (1.235, 0.001, 0.0, None)
    assert (line.tokens_in, line.tokens_out, line.retries) == (0, None, 0)
    assert len(line.path) == 200 and line.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


@NOT_BUILT
@given(st.fixed_dictionaries({
    "at": st.floats(min_value=0, max_value=4e9), "request_id": st.text(max_size=40),
    "path": st.text(max_size=300), "status": st.integers(0, 599),
    "total_s": st.floats(min_value=0, max_value=1e5), "overhead_s": st.floats(min_value=0, max_value=1e5),
    "ttfb_s": st.one_of(st.just(-1.0), st.floats(min_value=0, max_value=1e5)),
    "ttft_s": st.one_of(st.just(-1.0), st.floats(min_value=0, max_value=1e5)),
    "tokens_in": st.integers(-1, 10**12), "tokens_out": st.integers(-1, 10**12),
    "model": st.none() | st.text(max_size=20), "error": st.none() | st.sampled_from(["upstream_5xx", "x"]),
    "traceparent": st.none() | st.text(max_size=60) | st.just("00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
}))
def test_twins_agree_on_lines(fields: dict) -> None:  # type: ignore[type-arg]
    assert _formatter(_logline).line(_entry(_logline, **fields)) == \
        _formatter(_pure_logline).line(_entry(_pure_logline, **fields))


# -- batches of access-log lines, and the faster paths of the counts ---------------------------

_ANSWER = (b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",'
           b'"content":"say \\"usage\\": {\\"prompt_tokens\\": 99}"},"finish_reason":"stop"}],'
           b'"usage":{"prompt_tokens":9,"completion_tokens":10,"total_tokens":19,'
           b'"prompt_tokens_details":{"cached_tokens":0}},"service_tier":"default","system_fingerprint":"fp_1"}')


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("answer", "counts"), [
    (_ANSWER, (9, 10)),  # usage is not the last member; an escaped "usage" in the content is no key
    (b'{"usage":{"prompt_tokens":1},"x":{"usage":{"prompt_tokens":2,"completion_tokens":3}}}', (2, 3)),  # the last
    (b'{"usage":{"completion_tokens":1},"ussage":"usag","gusage":{"usag":"e"}}', (-1, 1)),
    (b'{"usage":{"completion_tokens":1},"note":"usage"}', (-1, -1)),  # the last "usage" opens no object
    (b'"usage":{"prompt_tokens":4}' + b" " * 4069, (4, -1)),  # starts exactly at the tail's first byte
    (b'"usage":{"prompt_tokens":4}' + b" " * 4070, (-1, -1)),  # one byte before it
])
def test_token_counts_find_the_last_usage(impl, answer: bytes, counts: tuple[int, int]) -> None:
    assert impl.token_counts(answer) == counts


@NOT_BUILT
@given(st.lists(_USAGE_PIECES | st.sampled_from([b"u", b"s", b"a", b"g", b"e", b'"usag', b'sage"']), max_size=60)
       .map(b"".join), st.integers(0, 4200))
def test_twins_agree_on_token_counts_in_long_answers(tail: bytes, padding: int) -> None:
    answer = b"x" * padding + tail
    assert _speedups.token_counts(answer) == _pure_speedups.token_counts(answer)


@pytest.mark.parametrize("impl", STATS)
def test_request_stats_say_when_a_snapshot_is_due(impl) -> None:
    stats = impl.RequestStats({"gpt"}, (0.1,), (0.001,), (10,))
    args = ("/v1/chat/completions", "gpt", "p", 200, None, 0.5, 0.0005, 0.4, -1.0, 12, 3)
    assert stats.observe(*args) is True  # the first since the last snapshot (none yet)
    assert stats.observe(*args) is False
    stats.snapshot()
    assert stats.observe(*args) is True
    assert [row[-1] for row in stats.snapshot()["requests"]] == [3]


@pytest.mark.parametrize("impl", STATS)
def test_request_stats_rows_with_equal_labels_from_other_strings(impl) -> None:
    stats = impl.RequestStats({"gpt"}, (0.1,), (0.001,), (10,))
    for route, model, provider, status in [("/v1/a", "gpt", "p", 200), ("/v1/a", "gpt", "p", 200),
                                           ("/v1/b", "gpt", "p", 500), ("/v1/a", "gpt", "q", 200),
                                           ("/v1/a", "gpx", "p", 200), ("/v1/a", None, "p", 200)]:
        # fresh but equal strings, as the gateway passes them (a new path and model per request)
        route, model = "".join(list(route)), "".join(list(model)) if model is not None else None
        stats.observe(route, model, "".join(list(provider)), status, None, 0.05, 0.0005, 0.04, -1.0, 1, 1)
    assert sorted(stats.snapshot()["requests"]) == [["/v1/a", "gpt", "p", 200, 2], ["/v1/a", "gpt", "q", 200, 1],
                                                    ["/v1/a", "none", "p", 200, 1], ["/v1/a", "unknown", "p", 200, 1],
                                                    ["/v1/b", "gpt", "p", 500, 1]]


@NOT_BUILT
@given(st.lists(st.tuples(
    st.sampled_from(["/v1/chat/completions", "other"]), st.sampled_from([None, "gpt", "stranger"]),
    st.sampled_from([None, "mock"]), st.sampled_from([200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 500]),
    st.sampled_from([None, "upstream_5xx"]), st.floats(0, 200), st.floats(0, 1), st.just(0.5), st.just(-1.0),
    st.integers(-1, 100), st.integers(-1, 100)), max_size=80))
def test_twins_agree_with_copied_labels_and_many_statuses(observations: list[tuple]) -> None:  # type: ignore[type-arg]
    """More statuses than a row holds inline, and labels that are equal but not the same objects."""
    args = ({"gpt"}, (0.001, 0.1, 10.0), (0.0001, 0.01), (1, 16))
    compiled, pure = _stats.RequestStats(*args), _pure_stats.RequestStats(*args)
    for route, model, *rest in observations:
        copied = ("".join(list(route)), "".join(list(model)) if model is not None else None, *rest)
        assert compiled.observe(*copied) == pure.observe(*copied)
    assert compiled.snapshot() == pure.snapshot()


def _lines(module, entries: list) -> bytes:  # type: ignore[no-untyped-def, type-arg]
    return _formatter(module).lines(entries)


class _Span:
    trace_id = "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize("impl", LINES)
def test_a_batch_of_lines_is_what_msgspec_makes_of_the_records(impl) -> None:
    from sluice.observability.access_log import Line

    entries = [
        _entry(impl),
        _entry(impl, request_id='q"\\\x01\x1f\x7f', path="/v1/caf\u00e9\n\t" + "x" * 300, model="\U0001f600\b\f\r\x0b",
               total_s=0.0012345, overhead_s=0.0000005, ttfb_s=0.0, ttft_s=2.5, tokens_in=0, tokens_out=7,
               upstream_status=502, error="upstream_5xx", key_prefix="sk-abc", user="u", cache="hit", retries=2),
        _entry(impl, trace=_Span(), traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        _entry(impl, traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", total_s=123456.7894999),
        # the general path, each (a compiled context holds no status past 64 bits, and retries=True as 1):
        _entry(impl, total_s=1e12, overhead_s=-0.0000006, **({} if _compiled(impl) else {"retries": True,
                                                                                        "status": 2**70})),
        _entry(impl, at=0.999, upstream_status=2**64 - 1),
    ]
    encoder = msgspec.json.Encoder()
    expected = encoder.encode_lines([_formatter(_pure_logline).line(entry) for entry in entries])
    assert _lines(impl, entries) == expected
    decoded = [msgspec.json.decode(line) for line in expected.splitlines()]
    assert [list(line) for line in decoded] == [list(Line.__struct_fields__[:-2])] * len(entries)
    assert decoded[2]["trace_id"] == _Span.trace_id and decoded[3]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert decoded[1]["path"] == "/v1/caf\u00e9\n\t" + "x" * 190 and decoded[1]["duration_ms"] == 1.235
    assert _lines(impl, []) == b""
    with pytest.raises(TypeError):  # what msgspec cannot encode, neither twin can
        _lines(impl, [_entry(impl, model=type("Name", (str,), {})("sub"))])


@pytest.mark.parametrize("impl", LINES)
def test_lines_read_entries_of_any_class(impl) -> None:
    """The pure twin reads any object with the fields; the compiled one takes only the compiled RequestContext,
    whose fields it reads as C struct members (TypeError for anything else; ``add`` counts it as failed)."""
    class Plain:
        def __init__(self, **fields: object) -> None:
            self.__dict__.update(fields)

    plain = Plain(**{name: getattr(_entry(impl, model="m"), name) for name in (
        "at", "request_id", "method", "path", "route", "status", "total_s", "overhead_s", "retries", "trace",
        "traceparent", "error", "ttfb_s", "ttft_s", "model", "provider", "upstream_status", "tokens_in",
        "tokens_out", "key_prefix", "user", "cache")})
    mixed = [_entry(impl, model="m"), plain, _entry(impl, model="m"), plain]
    if _compiled(impl):
        formatter = _formatter(impl)
        for other in (plain, _entry(_pure_logline, model="m"), None):
            with pytest.raises(TypeError):
                _lines(impl, [_entry(impl, model="m"), other])
            with pytest.raises(TypeError):
                formatter.line(other)
            with pytest.raises(TypeError):
                formatter.complete(other, _Exchange("GET", "/", {}))
            assert formatter.add(other) == -1 and isinstance(formatter.last_error, TypeError)
        assert formatter.buffered == 0 and formatter.failed == 3
    else:
        lines = _lines(impl, mixed).splitlines()
        assert len(set(lines)) == 1 and len(lines) == 4
        del plain.cache
        with pytest.raises(AttributeError):
            _lines(impl, [plain])
    entry = _entry(impl, model="m")
    del entry.cache
    with pytest.raises(AttributeError):
        _lines(impl, [entry])


@NOT_BUILT
@given(st.lists(st.fixed_dictionaries({
    "at": st.floats(min_value=0, max_value=4e9), "request_id": st.text(max_size=40),
    "path": st.text(max_size=300), "route": st.text(max_size=20), "status": st.integers(-2**63, 2**63 - 1),
    "total_s": st.floats(min_value=-1e3, max_value=2e9), "overhead_s": st.floats(min_value=0, max_value=1e5),
    "ttfb_s": st.one_of(st.just(-1.0), st.floats(min_value=-2, max_value=1e5)),
    "ttft_s": st.one_of(st.just(-1.0), st.floats(min_value=0, max_value=1e5)),
    "tokens_in": st.integers(-1, 10**12), "tokens_out": st.integers(-3, 2**62),
    "upstream_status": st.none() | st.integers(0, 599), "retries": st.integers(0, 3),
    "model": st.none() | st.text(max_size=20), "error": st.none() | st.sampled_from(["upstream_5xx", "x"]),
    "key_prefix": st.none() | st.text(max_size=12), "user": st.none() | st.text(max_size=12),
    "traceparent": st.none() | st.text(max_size=60) | st.just("00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
}), max_size=8))
def test_twins_agree_on_batches_of_lines(batch: list[dict]) -> None:  # type: ignore[type-arg]
    assert _lines(_logline, [_entry(_logline, **fields) for fields in batch]) == \
        _lines(_pure_logline, [_entry(_pure_logline, **fields) for fields in batch])


@NOT_BUILT
def test_twins_escape_every_ascii_character_at_every_place_in_a_word() -> None:
    """The compiled twin checks eight bytes at a time for one to escape: each character, each position."""
    def entries(impl):  # type: ignore[no-untyped-def]
        return [_entry(impl, model="a" * offset + chr(code) + "b" * 9, user=chr(code) * 17,
                       key_prefix="x" * (offset % 8) + chr(code), route="y" * offset + chr(code))
                for code in [*range(0x80), 0xE9, 0x2028, 0x1F600] for offset in range(17)]

    assert _lines(_logline, entries(_logline)) == _lines(_pure_logline, entries(_pure_logline))


def _take(formatter) -> bytes:  # type: ignore[no-untyped-def]
    """What the formatter's buffer gives a sink that takes everything (a regular file)."""
    with tempfile.TemporaryFile() as sink:
        lines = formatter.write(sink.fileno())
        sink.seek(0)
        data = sink.read()
    assert lines == data.count(b"\n") and formatter.buffered == 0
    return data


@pytest.mark.parametrize("impl", LINES)
def test_the_line_buffer_is_bounded_and_counts_what_it_refuses(impl) -> None:
    formatter = _formatter(impl)
    one = _lines(impl, [_entry(impl)])
    assert [formatter.add(_entry(impl)), formatter.add(_entry(impl)), formatter.buffered] == [1, 0, 2]
    assert formatter.lines([_entry(impl, request_id="other")]).count(b"\n") == 1 and formatter.buffered == 2
    formatter.limit(3, 10 * len(one))
    assert [formatter.add(_entry(impl)), formatter.add(_entry(impl)), formatter.dropped] == [0, -1, 1]  # 3 at most
    assert _take(formatter) == one * 3 and _take(formatter) == b""
    formatter.limit(100, 2 * len(one) + 1)
    assert [formatter.add(_entry(impl)), formatter.add_encoded(b'{"x":1}\n'), formatter.add(_entry(impl))] == [1, 0, -1]
    assert formatter.dropped == 2 and _take(formatter) == one + b'{"x":1}\n'
    formatter.limit(0, 100)
    assert formatter.add_encoded(b"{}\n") == -1 and formatter.dropped == 3
    formatter.limit(100, 10 * len(one))
    formatter.add(_entry(impl))
    assert formatter.discard() == 1 and formatter.buffered == 0 and _take(formatter) == b""


@pytest.mark.parametrize("impl", LINES)
def test_a_full_pipe_takes_part_of_the_buffer_and_the_rest_follows_whole(impl) -> None:
    formatter = _formatter(impl)
    entries = [_entry(impl, request_id=f"r{i}", path="/" + "p" * 150) for i in range(1000)]  # ~500 KiB: > a pipe
    for entry in entries:
        formatter.add(entry)
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    received, completed = b"", 0
    try:
        for _ in range(10_000):  # bounded; a few dozen rounds in fact
            with contextlib.suppress(BlockingIOError):
                completed += formatter.write(writer)
            received += os.read(reader, 1 << 20)
            assert formatter.buffered == 1000 - completed == 1000 - received.count(b"\n")
            if not formatter.buffered:
                break
        with pytest.raises(BlockingIOError):
            while True:  # fill the pipe, then one more write
                formatter.add_encoded(b"x" * 60000 + b"\n")
                formatter.write(writer)
    finally:
        os.close(reader)
        os.close(writer)
    assert received == _lines(impl, entries) and completed == 1000
    with pytest.raises(OSError):  # the reader is gone (or the descriptor): os.write's error
        formatter.write(writer)


@pytest.mark.parametrize("impl", LINES)
def test_a_line_that_fails_is_counted_and_leaves_nothing_in_the_buffer(impl) -> None:
    formatter = _formatter(impl)
    formatter.add(_entry(impl))
    broken = _entry(impl)
    del broken.model  # read half way through the line
    assert formatter.add(broken) == -1 and isinstance(formatter.last_error, AttributeError)
    assert formatter.add(_entry(impl, model=type("Name", (str,), {})("sub"))) == -1  # msgspec cannot encode it either
    assert isinstance(formatter.last_error, TypeError) and (formatter.failed, formatter.dropped) == (2, 0)
    assert formatter.buffered == 1 and _take(formatter) == _lines(impl, [_entry(impl)])


@NOT_BUILT
@given(st.lists(st.sampled_from(["add", "big", "take", "limit"]), max_size=40), st.integers(0, 6),
       st.integers(0, 4000))
def test_twins_agree_on_the_line_buffer(operations: list[str], lines: int, size: int) -> None:
    compiled, pure = _formatter(_logline), _formatter(_pure_logline)
    results: list[list[object]] = [[], []]
    for impl, formatter, out in zip((_logline, _pure_logline), (compiled, pure), results, strict=True):
        for i, operation in enumerate(operations):
            if operation == "add":
                out.append(formatter.add(_entry(impl, request_id=f"r{i}")))
            elif operation == "big":
                out.append(formatter.add(_entry(impl, path="/" + "p" * 150, model="m" * 300)))
            elif operation == "take":
                out.append(_take(formatter))
            else:
                formatter.limit(lines, size)
        out += [formatter.buffered, formatter.dropped, _take(formatter)]
    assert results[0] == results[1]


def _not_its_context(impl, call) -> None:  # type: ignore[no-untyped-def]
    """A compiled helper takes only the compiled RequestContext: TypeError for a duck-typed object, the pure twin's
    context or None (the pure helpers read any object with the fields)."""
    if _compiled(impl):
        class Plain:
            pass

        for other in (Plain(), _pure_context.RequestContext("r", 0.0), None):
            with pytest.raises(TypeError):
                call(other)


@pytest.mark.parametrize("impl", STATS)
def test_request_stats_read_the_rest_from_a_context(impl) -> None:
    """observe_context(ctx, ...) counts what observe(...) counts with the context's fields passed one by one."""
    RequestContext = _context_class(impl)

    class Plain:  # not a RequestContext: read by getattr (by the pure twin only)
        model, provider, error, overhead_s, upstream_s, ttft_s, tokens_in, tokens_out = (
            "gpt", "p", "upstream_5xx", 0.0004, 0.0, 0.2, 3, -1)

    contexts: list[Any] = []
    for model, upstream_s, tokens_in in [("gpt", 0.5, 12), (None, 0.0, -1), ("other", 2.0, 4)]:
        ctx = RequestContext("r", 0.0)
        ctx.model, ctx.provider, ctx.upstream_s, ctx.overhead_s, ctx.tokens_in, ctx.tokens_out = (
            model, "p", upstream_s, 0.0003, tokens_in, 5)
        contexts.append(ctx)
    if _compiled(impl):  # the same facts on a compiled context
        ctx = RequestContext("r", 0.0)
        ctx.model, ctx.provider, ctx.error, ctx.overhead_s, ctx.upstream_s, ctx.ttft_s, ctx.tokens_in, \
            ctx.tokens_out = "gpt", "p", "upstream_5xx", 0.0004, 0.0, 0.2, 3, -1
        contexts.append(ctx)
    else:
        contexts.append(Plain())
    args = ({"gpt"}, (0.1, 1.0), (0.001,), (10, 100))
    by_context, by_fields = impl.RequestStats(*args), impl.RequestStats(*args)
    for i, ctx in enumerate(contexts):
        by_context.observe_context(ctx, "/v1/chat/completions", 200 + i, 0.75)
        by_fields.observe("/v1/chat/completions", ctx.model, ctx.provider, 200 + i, ctx.error, 0.75, ctx.overhead_s,
                          ctx.upstream_s if ctx.upstream_s > 0 else -1.0, ctx.ttft_s, ctx.tokens_in, ctx.tokens_out)
    assert by_context.snapshot() == by_fields.snapshot()
    assert by_context.snapshot()["upstream"] == [["p", "gpt", [0.0, 1.0, 0.0, 0.5]],
                                                 ["p", "unknown", [0.0, 0.0, 1.0, 2.0]]]
    broken = RequestContext("r", 0.0)
    if _compiled(impl):
        with pytest.raises(NotImplementedError):  # a C field cannot be deleted
            del broken.tokens_out
        del broken.provider  # an object field can (a slot to Python)
    else:
        del broken.tokens_out
    with pytest.raises(AttributeError):
        by_context.observe_context(broken, "/v1/chat/completions", 200, 0.75)
    _not_its_context(impl, lambda other: by_context.observe_context(other, "/v1/chat/completions", 200, 0.75))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_count_tokens_fills_a_context_once(impl) -> None:
    RequestContext = _context_class(impl)

    ctx = RequestContext("r", 0.0)
    impl.count_tokens(ctx)  # no answer: nothing counted
    assert (ctx.tokens_in, ctx.tokens_out) == (-1, -1)
    ctx.answer = _ANSWER
    impl.count_tokens(ctx)
    assert (ctx.tokens_in, ctx.tokens_out) == (9, 10)
    ctx.answer, ctx.tokens_in, ctx.tokens_out = _ANSWER, -1, 4  # a translator counted already
    impl.count_tokens(ctx)
    assert (ctx.tokens_in, ctx.tokens_out) == (-1, 4)

    class Plain:  # not a RequestContext: getattr and setattr (by the pure twin only)
        answer, tokens_in, tokens_out = bytearray(b'{"usage": {"completion_tokens": 2}}'), -1, -1

    other = Plain() if not _compiled(impl) else RequestContext("r", 0.0)
    other.answer = bytearray(b'{"usage": {"completion_tokens": 2}}')  # not bytes: counted as token_counts does
    impl.count_tokens(other)
    assert (other.tokens_in, other.tokens_out) == (-1, 2)
    del ctx.answer
    with pytest.raises(AttributeError):
        impl.count_tokens(ctx)
    _not_its_context(impl, impl.count_tokens)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_finish_completes_a_context_as_the_gateway_did(impl) -> None:
    import time

    RequestContext = _context_class(impl)
    started = time.perf_counter()
    ok = RequestContext("r", started, "/v1/chat/completions")  # the route is known from the start
    ok.upstream_s, ok.answer = 0.0005, _ANSWER
    impl.finish(ok, 200)
    ended = time.perf_counter()  # an order, not a bound: finish read the clock between started and ended
    assert started < started + ok.total_s <= ended
    assert ok.overhead_s == pytest.approx(ok.total_s - 0.0005)
    assert (ok.status, ok.route, ok.error, ok.tokens_in, ok.tokens_out) == (200, "/v1/chat/completions", None, 9, 10)

    failed = RequestContext("r", started, "/v1/chat/completions")
    failed.overhead_s, failed.route = 0.25, "/v1/embeddings"  # set by the response head and the handler
    impl.finish(failed, 503)
    assert (failed.overhead_s, failed.route, failed.error) == (0.25, "/v1/embeddings", "upstream_5xx")
    refused = RequestContext("r", started, "other")
    impl.finish(refused, 404)
    assert (refused.status, refused.route, refused.error, refused.tokens_in) == (404, "other", "upstream_4xx", -1)
    named = RequestContext("r", started, "/v1/chat/completions")
    named.error = "rate_limited"
    impl.finish(named, 429)
    assert named.error == "rate_limited"
    unnamed = RequestContext("r", started)
    impl.finish(unnamed, 200)
    assert (unnamed.route, unnamed.error) == ("", None)  # finish never names the route

    class Plain:  # not a RequestContext: getattr and setattr (by the pure twin only)
        started, overhead_s, upstream_s, route, error = 0.0, -1.0, 0.0, "", None
        answer, tokens_in, tokens_out = None, -1, -1

    plain = Plain() if not _compiled(impl) else RequestContext("r", 0.0)
    impl.finish(plain, 400)
    assert (plain.route, plain.error, plain.status) == ("", "upstream_4xx", 400)
    assert plain.total_s == plain.overhead_s > 0
    if _compiled(impl):
        with pytest.raises(NotImplementedError):  # a C field cannot be deleted
            del ok.started
        del ok.error  # an object field can (a slot to Python)
    else:
        del ok.started
    with pytest.raises(AttributeError):
        impl.finish(ok, 500)
    _not_its_context(impl, lambda other: impl.finish(other, 200))


class _Exchange:
    """What complete() reads of an Exchange: method, path (slots, as RSGIExchange's) and header()."""

    __slots__ = ("_headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method, self.path, self._headers = method, path, headers

    def header(self, name: str) -> str | None:
        return self._headers.get(name)


@pytest.mark.parametrize("impl", LINES)
def test_add_with_the_exchange_completes_the_entry_as_the_gateway_did(impl) -> None:
    import time

    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    formatter = _formatter(impl)
    before = time.time()
    plain, traced = _entry(impl, at=0.0, method="", path=""), _entry(impl, at=0.0, trace=_Span())
    formatter.add(plain, _Exchange("PUT", "/v1/files/x", {"traceparent": traceparent}))
    formatter.add(traced, _Exchange("POST", "/v1/chat/completions", {"traceparent": traceparent}))
    assert before <= plain.at <= time.time() and before <= traced.at <= time.time()
    assert (plain.method, plain.path, plain.traceparent) == ("PUT", "/v1/files/x", traceparent)
    assert traced.traceparent is None  # the span's trace id is the line's
    assert _take(formatter) == _lines(impl, [plain, traced])
    lines = [msgspec.json.decode(line) for line in _lines(impl, [plain, traced]).splitlines()]
    assert [line["trace_id"] for line in lines] == ["4bf92f3577b34da6a3ce929d0e0e4736", _Span.trace_id]

    class NoSlots:  # an exchange without slots: getattr
        method, path = "GET", "/v1/models"

        def header(self, name: str) -> str | None:
            return None

    again = _entry(impl, at=0.0)
    formatter.add(again, NoSlots())
    assert (again.method, again.path, again.traceparent) == ("GET", "/v1/models", None)

    # An unsampled trace's traceparent, set by the gateway, is the line's: not the caller's header.
    ours = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    unsampled = _entry(impl, at=0.0, traceparent=ours)
    formatter.add(unsampled, _Exchange("POST", "/v1/chat/completions", {"traceparent": traceparent}))
    assert unsampled.traceparent == ours
    assert msgspec.json.decode(_lines(impl, [unsampled]))["trace_id"] == "0af7651916cd43dd8448eb211c80319c"

    class Lazy(_Exchange):  # ASGIExchange's header map: None until header() first builds it
        __slots__ = ()

        def header(self, name: str) -> str | None:
            return traceparent if name == "traceparent" else None

    lazy = _entry(impl, at=0.0)
    formatter.add(lazy, Lazy("GET", "/v1/models", None))
    assert lazy.traceparent == traceparent
