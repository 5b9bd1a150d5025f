"""The compiled helpers and their pure-Python twins: same cases, same answers."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sluice._native as native
from sluice._native import _pure, _pure_logline, _pure_stats

try:
    from sluice._native import _logline, _speedups, _stats
except ImportError:  # not built here
    _speedups = _stats = _logline = None

NOT_BUILT = pytest.mark.skipif(_speedups is None, reason="extension not built")
IMPLEMENTATIONS = [
    pytest.param(_pure, id="pure"),
    pytest.param(_speedups, id="compiled", marks=NOT_BUILT),
]
STATS = [
    pytest.param(_pure_stats, id="pure"),
    pytest.param(_stats, id="compiled", marks=NOT_BUILT),
]


def test_compiled_is_active_when_required() -> None:
    if os.environ.get("SLUICE_REQUIRE_COMPILED") == "1":
        assert None not in (_speedups, _stats, _logline), "the Cython extensions did not build or import"
        assert native.IMPLEMENTATION == "compiled"


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
    assert _speedups.valid_request_id(value) == _pure.valid_request_id(value)


@NOT_BUILT
@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=1, max_value=50))
def test_twins_agree_on_id_sequences(seed: int, count: int) -> None:
    compiled, pure = _speedups.RequestIds(seed), _pure.RequestIds(seed)
    assert [compiled.next() for _ in range(count)] == [pure.next() for _ in range(count)]


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
    assert _speedups.token_counts(answer) == _pure.token_counts(answer)


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

def _entry(**fields):  # type: ignore[no-untyped-def]
    from sluice.server.app import RequestContext

    ctx = RequestContext(fields.pop("request_id", "r1"), 0.0)
    ctx.at, ctx.method, ctx.path, ctx.route, ctx.status = 1700000000.25, "POST", "/v1/x", "other", 200
    for name, value in fields.items():
        setattr(ctx, name, value)
    return ctx


def _formatter(module):  # type: ignore[no-untyped-def]
    from sluice.observability.access_log import Line, _trace_id

    return module.LineFormatter(Line, _trace_id)


LINES = [pytest.param(_pure_logline, id="pure"), pytest.param(_logline, id="compiled", marks=NOT_BUILT)]


@pytest.mark.parametrize("impl", LINES)
def test_line_fields(impl) -> None:
    line = _formatter(impl).line(_entry(total_s=0.0012345, overhead_s=0.0000005, ttfb_s=0.0, ttft_s=-1.0,
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
    assert _formatter(_logline).line(_entry(**fields)) == _formatter(_pure_logline).line(_entry(**fields))
